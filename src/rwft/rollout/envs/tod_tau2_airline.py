"""The airline domain's tools of tau2-bench, written again on :class:`tod_tau2_data.Db` (see ``tod_tau2_tools``).

They follow ``tau2/domains/airline/tools.py`` (MIT, Copyright (c) 2025 Sierra Research; Apache-2.0 for NVIDIA's
changes) step for step: its fixed clock (2024-05-15T15:00:00), its new ids (reservations HATHAT, HATHAU,
HATHAV; certificates 3221322 to 3221324), its prices (50 per non-free bag, 30 per passenger for insurance) and
its quirks (a cancellation does not release seats), and its pydantic models where it builds one from the
arguments (``FlightInfo``, ``Passenger``, ``Payment``, ``Reservation``, ``Certificate``: ``tod_tau2_models``).
``list_all_airports`` reads its list from that file.
"""

from __future__ import annotations

import ast
import copy
import functools
from typing import Any

from rwft.rollout.envs.tod_tau2_data import Db, wheel_root
from rwft.rollout.envs.tod_tau2_models import validate
from rwft.rollout.envs.tod_tau2_tools import ToolError, _names, calculate, transfer_to_human_agents

NOW = "2024-05-15T15:00:00"
NEW_RESERVATIONS = ("HATHAT", "HATHAU", "HATHAV")
NEW_PAYMENTS = (3221322, 3221323, 3221324)


def _user(db: Db, user_id: str) -> dict[str, Any]:
    if not db.has("users", user_id):
        raise ToolError(f"User {user_id} not found")
    return db.get("users", user_id)


def _reservation(db: Db, reservation_id: str) -> dict[str, Any]:
    if not db.has("reservations", reservation_id):
        raise ToolError(f"Reservation {reservation_id} not found")
    return db.get("reservations", reservation_id)


def _flight(db: Db, number: str) -> dict[str, Any]:
    if not db.has("flights", number):
        raise ToolError(f"Flight {number} not found")
    return db.get("flights", number)


def _instance(db: Db, number: str, date: str) -> dict[str, Any]:
    flight = _flight(db, number)
    if date not in flight["dates"]:
        raise ToolError(f"Flight {number} not found on date {date}")
    return flight["dates"][date]


def _bookable(db: Db, number: str, date: str, cabin: str, people: int) -> dict[str, Any]:
    """The flight's date record, checked as tau2 does before a booking or a change."""
    day = _instance(db, number, date)
    if day["status"] != "available":
        raise ToolError(f"Flight {number} not available on date {date}")
    if day["available_seats"][cabin] < people:
        raise ToolError(f"Not enough seats on flight {number}")
    return day


def _search(db: Db, date: str, origin: str | None, destination: str | None,
            leave_after: str | None = None) -> list[dict[str, Any]]:
    out = []
    for f in db.values("flights"):
        if ((origin is None or f["origin"] == origin) and (destination is None or f["destination"] == destination)
                and date in f["dates"] and f["dates"][date]["status"] == "available"
                and (leave_after is None or f["scheduled_departure_time_est"] >= leave_after)):
            day = f["dates"][date]
            out.append({"flight_number": f["flight_number"], "origin": f["origin"], "destination": f["destination"],
                        "status": "available", "scheduled_departure_time_est": f["scheduled_departure_time_est"],
                        "scheduled_arrival_time_est": f["scheduled_arrival_time_est"], "date": None,
                        "available_seats": day["available_seats"], "prices": day["prices"]})
    return out


def _pay_update(db: Db, user_id: str, payment_id: str, total: float) -> dict[str, Any] | None:
    """tau2's ``_payment_for_update``: charge ``total`` (a gift card pays at once); None when it is 0."""
    methods = _user(db, user_id)["payment_methods"]
    if payment_id not in methods:
        raise ToolError("Payment method not found")
    source = methods[payment_id]["source"]
    if source == "certificate":
        raise ToolError("Certificate cannot be used to update reservation")
    if source == "gift_card" and methods[payment_id]["amount"] < total:
        raise ToolError("Gift card balance is not enough")
    if source == "gift_card":
        db.edit("users", user_id)["payment_methods"][payment_id]["amount"] -= total
    return validate("airline", "Payment", {"payment_id": payment_id, "amount": total}) if total != 0 else None


def _as_models(model: str, items: Any) -> Any:
    """tau2's ``if all(isinstance(x, dict) for x in items): items = [Model(**x) for x in items]``."""
    if all(isinstance(x, dict) for x in items):
        return [validate("airline", model, x) for x in items]
    return items


def book_reservation(db: Db, user_id: str, origin: str, destination: str, flight_type: str, cabin: str,
                     flights: list[dict[str, Any]], passengers: list[dict[str, Any]],
                     payment_methods: list[dict[str, Any]], total_baggages: int, nonfree_baggages: int,
                     insurance: str) -> dict[str, Any]:
    flights, passengers = _as_models("FlightInfo", flights), _as_models("Passenger", passengers)
    payment_methods = _as_models("Payment", payment_methods)
    user = _user(db, user_id)
    rid = next((r for r in NEW_RESERVATIONS if not db.has("reservations", r)), None)
    if rid is None:
        raise ToolError("Too many reservations")
    res = validate("airline", "Reservation", {
        "reservation_id": rid, "user_id": user_id, "origin": origin, "destination": destination,
        "flight_type": flight_type, "cabin": cabin, "flights": [], "passengers": copy.deepcopy(passengers),
        "payment_history": copy.deepcopy(payment_methods), "created_at": NOW, "total_baggages": total_baggages,
        "nonfree_baggages": nonfree_baggages, "insurance": insurance})
    total, legs = 0, []
    for info in flights:
        flight = _flight(db, info["flight_number"])
        day = _bookable(db, info["flight_number"], info["date"], cabin, len(passengers))
        res["flights"].append({"flight_number": info["flight_number"], "origin": flight["origin"],
                               "destination": flight["destination"], "date": info["date"],
                               "price": day["prices"][cabin]})
        legs.append(info)
        total += day["prices"][cabin] * len(passengers)
    total += (30 * len(passengers) if insurance == "yes" else 0) + 50 * nonfree_baggages
    for pay in payment_methods:
        method = user["payment_methods"].get(pay["payment_id"])
        if method is None:
            raise ToolError(f"Payment method {pay['payment_id']} not found")
        if method["source"] in ("gift_card", "certificate") and method["amount"] < pay["amount"]:
            raise ToolError(f"Not enough balance in payment method {pay['payment_id']}")
    paid = sum(p["amount"] for p in payment_methods)
    if paid != total:
        raise ToolError(f"Payment amount does not add up, total price is {total}, but paid {paid}")
    methods = db.edit("users", user_id)["payment_methods"]
    for pay in payment_methods:
        if methods[pay["payment_id"]]["source"] == "gift_card":
            methods[pay["payment_id"]]["amount"] -= pay["amount"]
        elif methods[pay["payment_id"]]["source"] == "certificate":
            methods.pop(pay["payment_id"])
    for info in legs:
        db.edit("flights", info["flight_number"])["dates"][info["date"]]["available_seats"][cabin] -= len(passengers)
    db.put("reservations", rid, res)
    db.edit("users", user_id)["reservations"].append(rid)
    return res


def cancel_reservation(db: Db, reservation_id: str) -> dict[str, Any]:
    _reservation(db, reservation_id)
    res = db.edit("reservations", reservation_id)
    res["payment_history"].extend([{"payment_id": p["payment_id"], "amount": -p["amount"]}
                                   for p in res["payment_history"]])
    res["status"] = "cancelled"
    return res


def get_reservation_details(db: Db, reservation_id: str) -> dict[str, Any]:
    return _reservation(db, reservation_id)


def get_user_details(db: Db, user_id: str) -> dict[str, Any]:
    return _user(db, user_id)


@functools.cache
def _airports() -> list[dict[str, str]]:
    """The ``AirportCode(iata=..., city=...)`` list of the wheel's ``list_all_airports``."""
    tree = ast.parse((wheel_root() / "tau2" / "domains" / "airline" / "tools.py").read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "list_all_airports")
    return [{k.arg: ast.literal_eval(k.value) for k in c.keywords} for c in ast.walk(fn)  # type: ignore[misc]
            if isinstance(c, ast.Call) and ast.unparse(c.func) == "AirportCode"]


def list_all_airports(db: Db) -> list[dict[str, str]]:
    return _airports()


def search_direct_flight(db: Db, origin: str, destination: str, date: str) -> list[dict[str, Any]]:
    return _search(db, date, origin, destination)


def search_onestop_flight(db: Db, origin: str, destination: str, date: str) -> list[list[dict[str, Any]]]:
    out = []
    for first in _search(db, date, origin, None):
        first["date"] = date
        date2 = f"2024-05-{int(date[-2:]) + 1}" if "+1" in first["scheduled_arrival_time_est"] else date
        for second in _search(db, date2, first["destination"], destination, first["scheduled_arrival_time_est"]):
            second["date"] = date2
            out.append([first, second])
    return out


def send_certificate(db: Db, user_id: str, amount: int) -> str:
    methods = _user(db, user_id)["payment_methods"]
    pid = next((f"certificate_{n}" for n in NEW_PAYMENTS if f"certificate_{n}" not in methods), None)
    if pid is None:
        raise ToolError("Too many certificates")
    db.edit("users", user_id)["payment_methods"][pid] = validate(
        "airline", "Certificate", {"id": pid, "amount": amount, "source": "certificate"})
    return f"Certificate {pid} added to user {user_id} with amount {amount}."


def update_reservation_baggages(db: Db, reservation_id: str, total_baggages: int, nonfree_baggages: int,
                                payment_id: str) -> dict[str, Any]:
    res = _reservation(db, reservation_id)
    _user(db, res["user_id"])
    payment = _pay_update(db, res["user_id"], payment_id, 50 * max(0, nonfree_baggages - res["nonfree_baggages"]))
    res = db.edit("reservations", reservation_id)
    if payment is not None:
        res["payment_history"].append(payment)
    res.update(total_baggages=total_baggages, nonfree_baggages=nonfree_baggages)
    return res


def update_reservation_flights(db: Db, reservation_id: str, cabin: str, flights: list[dict[str, Any]],
                               payment_id: str) -> dict[str, Any]:
    flights = _as_models("FlightInfo", flights)
    res = _reservation(db, reservation_id)
    _user(db, res["user_id"])
    people = len(res["passengers"])
    total, legs = 0, []
    for info in flights:
        same = next((f for f in res["flights"] if f["flight_number"] == info["flight_number"]
                     and f["date"] == info["date"] and cabin == res["cabin"]), None)
        if same is not None:
            total += same["price"] * people
            legs.append(copy.deepcopy(same))
            continue
        flight = _flight(db, info["flight_number"])
        day = _bookable(db, info["flight_number"], info["date"], cabin, people)
        legs.append({"flight_number": info["flight_number"], "date": info["date"], "price": day["prices"][cabin],
                     "origin": flight["origin"], "destination": flight["destination"]})
        total += day["prices"][cabin] * people
    total -= sum(f["price"] for f in res["flights"]) * people
    payment = _pay_update(db, res["user_id"], payment_id, total)
    res = db.edit("reservations", reservation_id)
    if payment is not None:
        res["payment_history"].append(payment)
    res.update(flights=legs, cabin=cabin)
    return res


def update_reservation_passengers(db: Db, reservation_id: str, passengers: list[dict[str, Any]]) -> dict[str, Any]:
    passengers = _as_models("Passenger", passengers)
    if len(passengers) != len(_reservation(db, reservation_id)["passengers"]):
        raise ToolError("Number of passengers does not match")
    res = db.edit("reservations", reservation_id)
    res["passengers"] = copy.deepcopy(passengers)
    return res


def get_flight_status(db: Db, flight_number: str, date: str) -> str:
    return _instance(db, flight_number, date)["status"]


AIRLINE = _names(book_reservation, calculate, cancel_reservation, get_reservation_details, get_user_details,
                 list_all_airports, search_direct_flight, search_onestop_flight, send_certificate,
                 transfer_to_human_agents, update_reservation_baggages, update_reservation_flights,
                 update_reservation_passengers, get_flight_status)
