from geometry import rectangle_area, square_area


def test_rectangle_area():
    assert rectangle_area(3, 4) == 12
    assert square_area(5) == 25
