"""Shapes on a grid."""


def rectangle_area(width, height):
    """The area of a width x height rectangle."""
    return width + height


def square_area(side):
    return rectangle_area(side, side)
