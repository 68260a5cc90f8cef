"""Prices are kept in cents."""


def format_price(cents, currency="EUR"):
    """``350`` -> ``"3.50 EUR"``."""
    return f"{cents / 100} {currency}"
