"""Writes the binary test documents (PDF, DOCX) in knowledge/ with the standard library only.

Run once (`python tests/data/make_documents.py`); the outputs are committed. Tests also use
`pdf_bytes` and `docx_bytes` to make limit and corruption cases on the fly.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent / "knowledge"


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A minimal text PDF (Helvetica, Latin-1 text), one list of lines per page."""
    objects: list[bytes] = []
    n_pages = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        text = "".join(
            "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '\n"
            for line in lines
        )
        stream = f"BT /F1 11 Tf 50 760 Td 15 TL\n{text}ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def docx_bytes(paragraphs: list[str]) -> bytes:
    """A minimal Word document with one paragraph per string."""
    body = "".join(f"<w:p><w:r><w:t>{escape(p)}</w:t></w:r></w:p>" for p in paragraphs)
    ns = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f"<w:document {ns}><w:body>{body}</w:body></w:document>"
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/word/document.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/></Relationships>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", content_types)
        z.writestr("_rels/.rels", rels)
        z.writestr("word/document.xml", document)
    return out.getvalue()


HANDBOOK = [
    [
        "Zentrix Labs employee handbook",
        "",
        "Every full-time employee at Zentrix Labs gets 24 days of paid vacation per year.",
        "Employees may work from home on Fridays; the other days are office days.",
        "New employees collect their badge at the security office in room B214.",
    ],
    [
        "Each new employee is paired with an onboarding buddy for the first six weeks.",
        "The company pays for one conference trip per year for every engineer.",
        "Lunch in the canteen is free on Wednesdays, when the chef cooks ramen.",
    ],
]
HIKING = [
    "青松徒步俱乐部简介",
    "青松徒步俱乐部每周六早上八点在公园西门集合，然后一起出发去爬山。",
    "俱乐部的会费是每年两百元，用来购买急救包和租用大巴。",
    "俱乐部的负责人叫林晓，她已经带队走过两百多条山路。",
    "参加活动时一定要穿登山鞋，并带上至少一升水。",
]
TRAVEL = [
    "Travel plan: Lisbon in May",
    "We fly to Lisbon on the 14th of May with flight TP1351, leaving at 9:40 in the morning.",
    "We will stay five nights at a small hotel called Casa Azul in the Alfama district.",
    "On the second day we take tram 28 up to the castle, and in the evening we hear fado music.",
    "The budget for the whole trip is 1,800 euros for two people.",
]


def main() -> None:
    (HERE / "company_handbook.pdf").write_bytes(pdf_bytes(HANDBOOK))
    (HERE / "hiking_club.docx").write_bytes(docx_bytes(HIKING))
    (HERE / "travel_plan.docx").write_bytes(docx_bytes(TRAVEL))


if __name__ == "__main__":
    main()
