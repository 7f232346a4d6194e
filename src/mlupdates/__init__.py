"""mlupdates: the tested library behind the executable book *ML Updates*.

Chapters import from here instead of pasting code into cells, so that every model the
book trains is unit-tested and checked against a production implementation.
"""

__version__ = "0.1.0"
