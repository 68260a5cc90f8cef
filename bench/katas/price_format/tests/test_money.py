from money import format_price


def test_whole_and_cents():
    assert format_price(350) == "3.50 EUR"


def test_small_amounts():
    assert format_price(5) == "0.05 EUR"
    assert format_price(1200, "USD") == "12.00 USD"
