from textutil import slugify


def test_slugify():
    assert slugify("Hello World") == "hello-world"
    assert slugify("  Many   spaces here ") == "many-spaces-here"
