"""Indices into mediapipe FaceMesh's 478-point topology (468 mesh points + 10 iris points).

Only the points the warp rig moves or pins are named here. Contours run from the viewer's left to
the viewer's right, so that "upper" and "lower" lists can be paired column by column.
"""

from __future__ import annotations

N_LANDMARKS = 478

# Lips. The outer contours include the mouth corners (61, 291); the inner ones (78, 308) likewise.
LIP_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_LOWER_OUTER = (146, 91, 181, 84, 17, 314, 405, 321, 375)  # without the corners
LIP_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_LOWER_INNER = (95, 88, 178, 87, 14, 317, 402, 318, 324)  # without the corners
MOUTH_CORNERS_OUTER = (61, 291)
MOUTH_CORNERS_INNER = (78, 308)
LIP_TOP_CENTRE_INNER = 13
LIP_BOTTOM_CENTRE_INNER = 14

# Skin around the lips (just outside the corners, above and below them): it follows rounded lips
# part of the way, so the rounding does not crease the skin at the corners.
PERIORAL = (57, 186, 43, 92, 202, 287, 410, 273, 322, 422)

# Jaw line, from the chin outwards: these follow the lower lip when the mouth opens.
CHIN = (152, 148, 176, 377, 400)
JAW_MID = (149, 150, 378, 379)
JAW_HIGH = (136, 172, 365, 397)

FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
FOREHEAD_TOP = 10
CHIN_BOTTOM = 152

# Points that must not move when the mouth or the eyes move (TPS anchors).
NOSE = (1, 2, 4, 5, 98, 327, 94, 195, 6, 168)
CHEEKS = (50, 280, 205, 425, 123, 352, 116, 345, 187, 411)
BROWS = (70, 63, 105, 66, 107, 300, 293, 334, 296, 336)
EYE_CORNERS = (33, 133, 263, 362)
NOSE_TIP = 1
CHEEK_EDGES = (234, 454)  # the face's left and right edges at cheek height (viewer's left first)
CHEEK_SKIN = 205  # a spot of plain cheek skin, for the brightness of the scene

# Eyebrows (upper and lower edge, each brow), the skin just above them that follows a raise part
# of the way, and the upper forehead that stays put (so the raise does not shift the hairline).
BROW_LINES = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
BROW_SKIN = (9, 151, 108, 337, 69, 299, 104, 333)
FOREHEAD = (10, 109, 338, 67, 297, 103, 332)

# Eyelids: (upper, lower) pairs, each eye from its outer to its inner corner region.
RIGHT_EYE_LIDS = ((246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (173, 155))
LEFT_EYE_LIDS = ((466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (398, 382))
EYE_LIDS = RIGHT_EYE_LIDS + LEFT_EYE_LIDS
RIGHT_EYE_CORNERS = (33, 133)  # outer, inner
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
LEFT_EYE_CORNERS = (263, 362)
# Aperture outlines (corner, upper lid, corner, lower lid back), for measuring how open an eye is.
RIGHT_EYE_OUTLINE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE_OUTLINE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
