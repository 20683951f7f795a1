"""The demo's file formats: VLMEvalKit's xlsx result files, csv/json summaries and LMUData TSVs.

Every writer is deterministic (fixed zip timestamps, no clock or randomness), so the same plan
gives byte-identical files.
"""
from __future__ import annotations

import csv
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vlrb.demo.images import draw_image_b64
from vlrb.demo.render import Rendered
from vlrb.demo.samples import DatasetPlan
from vlrb.demo.world import RUN_FOLDER, dataset_number


_XLSX_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        '</Types>'),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
        '</Relationships>'),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>'
        '</Relationships>'),
    # style 1 = the bold, bordered header that pandas writes
    "xl/styles.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
        '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="2"><border><left/><right/><top/><bottom/><diagonal/></border>'
        '<border><left style="thin"><color auto="1"/></left><right style="thin"><color auto="1"/></right>'
        '<top style="thin"><color auto="1"/></top><bottom style="thin"><color auto="1"/></bottom><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="1" xfId="0" applyFont="1" applyBorder="1" applyAlignment="1">'
        '<alignment horizontal="center" vertical="top"/></xf></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles></styleSheet>'),
}
_SHEET_HEAD = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
               '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>')
_SHEET_TAIL = "</sheetData></worksheet>"
# control characters XML 1.0 forbids; as single bytes they never occur inside a UTF-8 sequence
_XML_ILLEGAL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give byte-identical files


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = 1  # fast deflate (the attribute zipfile itself sets, Python 3.7-3.13+)
    return info


def _col_letters(c: int) -> str:
    letters = ""
    c += 1
    while c:
        c, rem = divmod(c - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _xml_text(v: str) -> str:
    if "&" in v or "<" in v or ">" in v:
        return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return v


def _blank(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _xlsx_cell(ref: str, v: Any) -> str:
    """One cell: number, boolean or inline string; '' for a blank (None, NaN, empty string)."""
    if _blank(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return f'<c r="{ref}" t="b"><v>{int(v)}</v></c>'
    if isinstance(v, (int, np.integer)):
        return f'<c r="{ref}"><v>{int(v)}</v></c>'
    if isinstance(v, (float, np.floating)):
        return f'<c r="{ref}"><v>{float(v)!r}</v></c>'
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{_xml_text(str(v))}</t></is></c>'


def _xlsx_column(letter: str, col: list[Any]) -> list[str]:
    """The cells of one column; a fast path for all-string columns (most of the bytes)."""
    if all(isinstance(v, str) or v is None for v in col):
        return ["" if not v else
                f'<c r="{letter}{n}" t="inlineStr"><is><t xml:space="preserve">{_xml_text(v)}</t></is></c>'
                for n, v in enumerate(col, 2)]
    return [_xlsx_cell(f"{letter}{n}", v) for n, v in enumerate(col, 2)]


def write_xlsx(path: Path, columns: list[str], data: list[list[Any]]) -> None:
    """Column-major data to a one-sheet xlsx: bold header row, then one row per record.

    A minimal SpreadsheetML writer (inline strings, deflate level 1). Profiling showed xlsxwriter
    spending most of a full-scale build in per-cell bookkeeping and zlib at its default level;
    this writes the same table (pandas/openpyxl/calamine read back the same values and dtypes)
    several times faster, and byte-identically for the same inputs.
    """
    letters = [_col_letters(c) for c in range(len(columns))]
    cells = [_xlsx_column(l, col) for l, col in zip(letters, data)]
    header = "".join(f'<c r="{l}1" t="inlineStr" s="1"><is><t>{_xml_text(name)}</t></is></c>'
                     for l, name in zip(letters, columns))
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in _XLSX_PARTS.items():
            zf.writestr(_zip_info(name), text)
        with zf.open(_zip_info("xl/worksheets/sheet1.xml"), "w", force_zip64=True) as fh:
            chunk = [_SHEET_HEAD, f'<row r="1">{header}</row>']
            for n, row in enumerate(zip(*cells), 2):
                chunk.append(f'<row r="{n}">{"".join(row)}</row>')
                if len(chunk) >= 2000:
                    fh.write(_xml_bytes("".join(chunk)))
                    chunk = []
            chunk.append(_SHEET_TAIL)
            fh.write(_xml_bytes("".join(chunk)))


def _xml_bytes(text: str) -> bytes:
    """UTF-8 without the control characters XML 1.0 forbids (the markup itself has none)."""
    return text.encode("utf-8").translate(None, _XML_ILLEGAL_BYTES)


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)


def _tsv_cell(v: Any) -> str:
    return "" if _blank(v) else str(v)


def write_tsv(plan: DatasetPlan, path: Path, seed: int, image_size: int) -> None:
    """The LMUData TSV: every field quoted, as VLMEvalKit writes it; images as base64 JPEG."""
    d = dataset_number(plan.key)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["index", "image", *plan.columns])
        for i, s in enumerate(plan.samples):
            if s.image_ref is not None:
                image = str(s.image_ref)  # back-reference: another row's index
            else:
                image = draw_image_b64(s.kind, s.difficulty, s.topic,
                                       seed * 1_000_003 + d * 100_003 + i, image_size)
            w.writerow([s.index, image, *(_tsv_cell(s.row.get(c)) for c in plan.columns)])


def _lower_columns(cols: list[str]) -> list[str]:
    """VLMEvalKit's MCQ result: names lower-cased except single upper-case option letters."""
    return [c if len(c) == 1 and c.isupper() else c.lower() for c in cols]


def write_result_files(run_dir: Path, stem: str, plan: DatasetPlan, out: Rendered) -> None:
    """The files of one (model, dataset) `stem` in its run folder: predictions, evaluation files, summaries."""
    base = [[s.index for s in plan.samples]]
    base += [[s.row.get(c) for s in plan.samples] for c in plan.columns]
    pred_cols = ["index", *plan.columns, "prediction"]
    write_xlsx(run_dir / f"{stem}.xlsx", pred_cols, base + [out.predictions])
    for suffix, extra in out.eval_files:
        cols = pred_cols + list(extra)
        if out.lower_case_columns:
            cols = _lower_columns(cols)
        write_xlsx(run_dir / f"{stem}{suffix}", cols, base + [out.predictions] + list(extra.values()))
    for suffix, obj in out.json_files:
        (run_dir / f"{stem}{suffix}").write_text(json.dumps(obj, indent=4))
    for suffix, rows in out.csv_files:
        _write_csv(run_dir / f"{stem}{suffix}", rows)


def link_run_files(model_dir: Path) -> None:
    """run.py links every result file of the run folder into the model folder."""
    for f in sorted((model_dir / RUN_FOLDER).iterdir()):
        os.symlink(f"{RUN_FOLDER}/{f.name}", model_dir / f.name)
