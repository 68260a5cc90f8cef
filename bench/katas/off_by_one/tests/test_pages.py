from pages import page, page_count


def test_pages():
    items = list(range(10))
    assert page_count(10, 4) == 3
    assert page(items, 1, 4) == [0, 1, 2, 3]
    assert page(items, 3, 4) == [8, 9]
