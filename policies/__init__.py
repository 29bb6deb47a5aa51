"""Pure decision code: numpy/scipy only, time and randomness passed in (a test enforces it)."""
