"""The dashboard's screens: the panels, one question's journey, and the help."""
