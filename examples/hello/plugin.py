"""hello: turn messy sales exports into one tidy table.

Uses nothing but the Python standard library, so it runs in a bare environment:
the guest turns the dict-of-lists chunks it yields into Arrow itself.

The exports disagree on almost everything: delimiter (comma, semicolon, tab),
header spelling, date format, decimal comma vs. point, currency signs, thousands
separators, blank and comment lines, a byte-order mark. The output does not.
"""
import csv
import re
from datetime import datetime
from pathlib import Path

# The output's types, declared: a file whose first chunk has no quantity at all (a leading
# run of "n/a") still gets an int64 quantity column, and every file the same schema.
MANIFEST = {
    "name": "hello",
    "version": "1.0.0",
    "topics": {
        "output": {
            "columns": {
                "date": "date32",
                "store": "string",
                "product": "string",
                "quantity": "int64",
                "unit_price": "float64",
                "total": "float64",
                "source_file": "string",
                "source_line": "int64",
            }
        }
    },
}

CHUNK_ROWS = 5000

# Header spellings seen in the wild -> our column names.
ALIASES = {
    "date": "date", "day": "date", "sale_date": "date",
    "store": "store", "shop": "store", "branch": "store",
    "product": "product", "item": "product", "article": "product",
    "qty": "quantity", "quantity": "quantity", "units": "quantity",
    "unit_price": "unit_price", "price": "unit_price", "price_each": "unit_price",
}
DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%Y/%m/%d", "%d %b %Y")
MISSING = {"", "n/a", "na", "null", "none", "-", "?"}


def normalise_header(name):
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return ALIASES.get(key, key)


def parse_date(text):
    text = text.strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    return None


def parse_number(text, decimal_comma):
    text = re.sub(r"[^\d,.\-]", "", text.strip())  # currency signs, spaces
    if text.lower() in MISSING or text in {"-", ".", ","}:
        return None
    if decimal_comma:
        text = text.replace(".", "").replace(",", ".")
    else:
        text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


class Handler:
    def execute(self, file_path):
        path = Path(file_path)
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig drops a BOM
            lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            return
        dialect = csv.Sniffer().sniff(lines[0][1], delimiters=",;\t|")
        decimal_comma = dialect.delimiter == ";"
        rows = csv.reader((line for _, line in lines), dialect)
        header = [normalise_header(h) for h in next(rows)]
        missing = {"date", "product"} - set(header)
        if missing:
            raise ValueError(f"{path.name}: no {' or '.join(sorted(missing))} column in header {header}")

        chunk = self.empty()
        for (line_no, _), values in zip(lines[1:], rows):
            record = dict(zip(header, (v.strip() for v in values)))
            qty = parse_number(record.get("quantity", ""), decimal_comma)
            price = parse_number(record.get("unit_price", ""), decimal_comma)
            chunk["date"].append(parse_date(record["date"]))
            chunk["store"].append(record.get("store") or None)
            chunk["product"].append(record["product"] or None)
            chunk["quantity"].append(None if qty is None else int(qty))
            chunk["unit_price"].append(price)
            chunk["total"].append(None if qty is None or price is None else round(qty * price, 2))
            chunk["source_file"].append(path.name)
            chunk["source_line"].append(line_no)
            if len(chunk["date"]) >= CHUNK_ROWS:
                yield chunk
                chunk = self.empty()
        if chunk["date"]:
            yield chunk

    @staticmethod
    def empty():
        return {k: [] for k in ("date", "store", "product", "quantity", "unit_price", "total", "source_file", "source_line")}
