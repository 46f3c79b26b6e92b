"""The tools of tau2-bench's mock, retail and airline domains, written again on :class:`tod_tau2_data.Db`.

tau2's own toolkits (``tau2/domains/*/tools.py``, MIT, Copyright (c) 2025 Sierra Research; Apache-2.0 for
NVIDIA's changes) need pydantic models and loguru, so rwft does not import them: these functions follow their
behaviour step for step on plain JSON records (the same checks in the same order, the same errors, the same
writes, including tau2's quirks: ``modify_pending_order_items`` prices every new item at the last one's
variant price; ``cancel_reservation`` does not release seats). Every tool of the three domains is here;
:data:`ASSERTIONS` holds the mock domain's environment assertions. A tool raises :class:`ToolError` for what
tau2's raises ``ValueError``; its result is then ``"Error: <message>"``. Like tau2's, they take their arguments
as the agent wrote them (no schema check): where tau2 builds a pydantic model from them (``Task``,
``UserAddress``, airline's ``Passenger``, ``Reservation``, ...), ``tod_tau2_models.validate`` converts or
refuses them as pydantic does; elsewhere a value of the wrong type is used as it is (an invalid status is
written) or fails as it fails in tau2's Python.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from rwft.rollout.envs.tod_tau2_data import Db
from rwft.rollout.envs.tod_tau2_models import validate


class ToolError(Exception):
    """A tool refused the call (tau2's ``ValueError``)."""


def _need(db: Db, coll: str, key: Any, what: str) -> None:
    if not db.has(coll, key):
        raise ToolError(what)


def calculate(db: Db, expression: str) -> str:
    if not all(ch in "0123456789+-*/(). " for ch in expression):
        raise ToolError("Invalid characters in expression")
    try:
        return str(round(float(eval(expression, {"__builtins__": None}, {})), 2))  # noqa: S307 (digits and operators only)
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError) as e:
        raise ToolError(f"Invalid expression: {e}") from None


def transfer_to_human_agents(db: Db, summary: str) -> str:
    return "Transfer successful"


# ---------------------------------------------------------------- mock


def create_task(db: Db, user_id: str, title: str, description: str | None = None) -> dict[str, Any]:
    _need(db, "users", user_id, f"User {user_id} not found")
    task_id = f"task_{len(db.keys('tasks')) + 1}"
    task = validate("mock", "Task", {"task_id": task_id, "title": title, "description": description,
                                     "status": "pending"})
    db.put("tasks", task_id, task)
    db.edit("users", user_id)["tasks"].append(task_id)
    return task


def get_users(db: Db) -> list[Any]:
    return db.values("users")


def update_task_status(db: Db, task_id: str, status: str) -> dict[str, Any]:
    _need(db, "tasks", task_id, f"Task {task_id} not found")
    task = db.edit("tasks", task_id)
    task["status"] = status
    return task


def assert_task_status(db: Db, task_id: str, expected_status: str) -> bool:
    _need(db, "tasks", task_id, f"Task {task_id} not found")
    return db.get("tasks", task_id)["status"] == expected_status


def assert_number_of_tasks(db: Db, user_id: str, expected_number: int) -> bool:
    _need(db, "users", user_id, f"User {user_id} not found")
    return len(db.get("users", user_id)["tasks"]) == expected_number


# ---------------------------------------------------------------- retail


def _order(db: Db, order_id: str, edit: bool = False) -> dict[str, Any]:
    _need(db, "orders", order_id, "Order not found")
    return db.edit("orders", order_id) if edit else db.get("orders", order_id)


def _user(db: Db, user_id: str, what: str = "User not found") -> dict[str, Any]:
    _need(db, "users", user_id, what)
    return db.get("users", user_id)


def _method(db: Db, user_id: str, method_id: str) -> dict[str, Any]:
    methods = _user(db, user_id)["payment_methods"]
    if method_id not in methods:
        raise ToolError("Payment method not found")
    return methods[method_id]


def _gift_add(db: Db, user_id: str, method_id: str, amount: float) -> None:
    """Add ``amount`` to a retail gift card's balance (rounded to cents, as tau2)."""
    method = db.edit("users", user_id)["payment_methods"][method_id]
    method["balance"] = round(method["balance"] + amount, 2)


def _variant(db: Db, product_id: str, variant_id: str) -> dict[str, Any]:
    _need(db, "products", product_id, "Product not found")
    variants = db.get("products", product_id)["variants"]
    if variant_id not in variants:
        raise ToolError("Variant not found")
    return variants[variant_id]


def _price_difference(db: Db, order: dict[str, Any], item_ids: list[str], new_item_ids: list[str],
                      modify: bool) -> tuple[float, dict[str, Any] | None]:
    """The new items' price minus the old ones' and the last new variant (tau2's checks, in its order)."""
    have = [item["item_id"] for item in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > have.count(item_id):
            raise ToolError(f"{item_id} not found" if modify else f"Number of {item_id} not found.")
    if len(item_ids) != len(new_item_ids):
        raise ToolError("The number of items to be exchanged should match" + ("" if modify else "."))
    diff, variant = 0.0, None
    for item_id, new_id in zip(item_ids, new_item_ids, strict=True):
        if modify and item_id == new_id:
            raise ToolError("The new item id should be different from the old item id")
        item = next(i for i in order["items"] if i["item_id"] == item_id)
        variant = _variant(db, item["product_id"], new_id)
        if not variant["available"]:
            raise ToolError(f"New item {new_id} not found or available")
        diff += variant["price"] - item["price"]
    return diff, variant


def cancel_pending_order(db: Db, order_id: str, reason: str) -> dict[str, Any]:
    order = _order(db, order_id)
    if order["status"] != "pending":
        raise ToolError("Non-pending order cannot be cancelled")
    if reason not in ("no longer needed", "ordered by mistake"):
        raise ToolError("Invalid reason")
    refunds = []
    for payment in order["payment_history"]:
        refunds.append({"transaction_type": "refund", "amount": payment["amount"],
                        "payment_method_id": payment["payment_method_id"]})
        if _method(db, order["user_id"], payment["payment_method_id"])["source"] == "gift_card":
            _gift_add(db, order["user_id"], payment["payment_method_id"], payment["amount"])
    order = _order(db, order_id, edit=True)
    order.update(status="cancelled", cancel_reason=reason)
    order["payment_history"].extend(refunds)
    return order


def exchange_delivered_order_items(db: Db, order_id: str, item_ids: list[str], new_item_ids: list[str],
                                   payment_method_id: str) -> dict[str, Any]:
    order = _order(db, order_id)
    if order["status"] != "delivered":
        raise ToolError("Non-delivered order cannot be exchanged")
    diff, _ = _price_difference(db, order, item_ids, new_item_ids, modify=False)
    diff = round(diff, 2)
    method = _method(db, order["user_id"], payment_method_id)
    if method["source"] == "gift_card" and method["balance"] < diff:
        raise ToolError("Insufficient gift card balance to pay for the price difference")
    _order(db, order_id, edit=True).update(
        status="exchange requested", exchange_items=sorted(item_ids), exchange_new_items=sorted(new_item_ids),
        exchange_payment_method_id=payment_method_id, exchange_price_difference=diff)
    return db.get("orders", order_id)


def find_user_id_by_name_zip(db: Db, first_name: str, last_name: str, zip: str) -> str:  # noqa: A002 (tau2's name)
    for user_id in db.keys("users"):
        user = db.get("users", user_id)
        if (user["name"]["first_name"].lower() == first_name.lower()
                and user["name"]["last_name"].lower() == last_name.lower() and user["address"]["zip"] == zip):
            return user_id
    raise ToolError("User not found")


def find_user_id_by_email(db: Db, email: str) -> str:
    for user_id in db.keys("users"):
        if db.get("users", user_id)["email"].lower() == email.lower():
            return user_id
    raise ToolError("User not found")


def get_order_details(db: Db, order_id: str) -> dict[str, Any]:
    return _order(db, order_id)


def get_product_details(db: Db, product_id: str) -> dict[str, Any]:
    _need(db, "products", product_id, "Product not found")
    return db.get("products", product_id)


def get_user_details(db: Db, user_id: str) -> dict[str, Any]:
    return _user(db, user_id)


def list_all_product_types(db: Db) -> str:
    return json.dumps({p["name"]: p["product_id"] for p in db.values("products")}, sort_keys=True)


def _address(**parts: str) -> dict[str, str]:
    """tau2's ``UserAddress(...)`` of the call's arguments."""
    return validate("retail", "UserAddress", parts)


def modify_pending_order_address(db: Db, order_id: str, address1: str, address2: str, city: str, state: str,
                                 country: str, zip: str) -> dict[str, Any]:  # noqa: A002
    if "pending" not in _order(db, order_id)["status"]:
        raise ToolError("Non-pending order cannot be modified")
    order = _order(db, order_id, edit=True)
    order["address"] = _address(address1=address1, address2=address2, city=city, state=state, country=country, zip=zip)
    return order


def modify_pending_order_items(db: Db, order_id: str, item_ids: list[str], new_item_ids: list[str],
                               payment_method_id: str) -> dict[str, Any]:
    order = _order(db, order_id)
    if order["status"] != "pending":
        raise ToolError("Non-pending order cannot be modified")
    diff, variant = _price_difference(db, order, item_ids, new_item_ids, modify=True)
    method = _method(db, order["user_id"], payment_method_id)
    if method["source"] == "gift_card" and method["balance"] < diff:
        raise ToolError("Insufficient gift card balance to pay for the new item")
    order = _order(db, order_id, edit=True)
    order["payment_history"].append({"transaction_type": "payment" if diff > 0 else "refund", "amount": abs(diff),
                                     "payment_method_id": payment_method_id})
    if method["source"] == "gift_card":
        _gift_add(db, order["user_id"], payment_method_id, -diff)
    for item_id, new_id in zip(item_ids, new_item_ids, strict=True):
        item = next(i for i in order["items"] if i["item_id"] == item_id)
        item.update(item_id=new_id, price=variant["price"], options=copy.deepcopy(variant["options"]))  # type: ignore[index]
    order["status"] = "pending (item modified)"
    return order


def modify_pending_order_payment(db: Db, order_id: str, payment_method_id: str) -> dict[str, Any]:
    order = _order(db, order_id)
    if "pending" not in order["status"]:
        raise ToolError("Non-pending order cannot be modified")
    method = _method(db, order["user_id"], payment_method_id)
    history = order["payment_history"]
    if len(history) != 1 or history[0]["transaction_type"] != "payment":
        raise ToolError("There should be exactly one payment for a pending order")
    old = history[0]["payment_method_id"]
    if old == payment_method_id:
        raise ToolError("The new payment method should be different from the current one")
    amount = history[0]["amount"]
    if method["source"] == "gift_card" and method["balance"] < amount:
        raise ToolError("Insufficient gift card balance to pay for the order")
    order = _order(db, order_id, edit=True)
    order["payment_history"].extend([
        {"transaction_type": "payment", "amount": amount, "payment_method_id": payment_method_id},
        {"transaction_type": "refund", "amount": amount, "payment_method_id": old}])
    if method["source"] == "gift_card":
        _gift_add(db, order["user_id"], payment_method_id, -amount)
    if _method(db, order["user_id"], old)["source"] == "gift_card":
        _gift_add(db, order["user_id"], old, amount)
    return order


def modify_user_address(db: Db, user_id: str, address1: str, address2: str, city: str, state: str,
                        country: str, zip: str) -> dict[str, Any]:  # noqa: A002
    _user(db, user_id)
    user = db.edit("users", user_id)
    user["address"] = _address(address1=address1, address2=address2, city=city, state=state, country=country, zip=zip)
    return user


def return_delivered_order_items(db: Db, order_id: str, item_ids: list[str], payment_method_id: str) -> dict[str, Any]:
    order = _order(db, order_id)
    if order["status"] != "delivered":
        raise ToolError("Non-delivered order cannot be returned")
    method = _method(db, order["user_id"], payment_method_id)
    if method["source"] != "gift_card" and payment_method_id != order["payment_history"][0]["payment_method_id"]:
        raise ToolError("Payment method should be the original payment method")
    have = [item["item_id"] for item in order["items"]]
    if any(item_ids.count(i) > have.count(i) for i in item_ids):
        raise ToolError("Some item not found")
    _order(db, order_id, edit=True).update(status="return requested", return_items=sorted(item_ids),
                                           return_payment_method_id=payment_method_id)
    return db.get("orders", order_id)


def _names(*fns: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    return {f.__name__: f for f in fns}


MOCK = _names(create_task, get_users, update_task_status, transfer_to_human_agents)
RETAIL = _names(calculate, cancel_pending_order, exchange_delivered_order_items, find_user_id_by_name_zip,
                find_user_id_by_email, get_order_details, get_product_details, get_user_details,
                list_all_product_types, modify_pending_order_address, modify_pending_order_items,
                modify_pending_order_payment, modify_user_address, return_delivered_order_items,
                transfer_to_human_agents)
ASSERTIONS = _names(assert_task_status, assert_number_of_tasks)
"""The mock domain's environment assertions (``evaluation_criteria.env_assertions``)."""
