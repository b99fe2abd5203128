"""A question's journey as the operator sees it: one colour per stage, one way to render a hop.

Used by ``qactl ask``, ``qactl demo`` and the dashboard (``qactl watch``); UI-free apart from Rich
renderables.
"""

from qactl.journey.render import STAGE_STYLE, hop_detail, hop_line, stage_style

__all__ = ["STAGE_STYLE", "hop_detail", "hop_line", "stage_style"]
