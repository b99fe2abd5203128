"""Dashboard widgets: thin shells that redraw a pure panel function when data arrives."""
