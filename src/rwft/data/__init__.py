"""Logged conversations: reading, checking, encoding to tokens, pairs, validation, export."""
