"""Split a list of items into pages."""


def page_count(total, per_page):
    """How many pages ``total`` items fill at ``per_page`` a page."""
    return total // per_page


def page(items, number, per_page):
    """The items of page ``number`` (1 is the first page)."""
    start = number * per_page
    return items[start : start + per_page]
