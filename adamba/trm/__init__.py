"""Route B: the Tiny Recursive Model (TRM) for grid puzzles: ARC-AGI, Sudoku and mazes.

`tasks/` turns each puzzle family into flat token sequences with labels, puzzle ids and the
meta its scorer needs; the model, its training loop and evaluation build on that interface.
"""
