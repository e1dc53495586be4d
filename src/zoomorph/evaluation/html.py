"""The HTML pages' shared pieces: autoescaped jinja2 templates (evaluation/templates/) and fragments.

Every value that reaches a page is escaped unless it is already `Markup`: the
pieces below return Markup, and `text` formats a fragment of trusted markup
with escaped values, so a run or class name can never inject HTML.
Pages are self-contained: images are PNG data URIs and the style is inline.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

from zoomorph.evaluation.plots import png_bytes

_ENV = Environment(loader=PackageLoader("zoomorph.evaluation", "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
_PARTS = _ENV.get_template("parts.html").module


@dataclass(frozen=True)
class Section:
    key: str  # the section's id, for links into the page
    heading: str
    content: Markup


def page(title: str, intro: Markup, sections: list[Section]) -> str:
    """A complete page: the title, the intro, then one <section id=key> per section."""
    return _ENV.get_template("page.html").render(title=title, intro=intro, sections=sections) + "\n"


def text(markup: str, *values) -> Markup:
    """A fragment of trusted markup with `values` escaped into its {} slots: text("<b>{}</b>", name)."""
    return Markup(markup).format(*values)


def join(*parts: Markup) -> Markup:
    return Markup("\n").join(parts)


def table(rows: list[list], header: list[str]) -> Markup:
    return Markup(_PARTS.table(rows, header))


def note(message: str) -> Markup:
    return Markup(_PARTS.note(message))


def image(fig: Figure, alt: str) -> Markup:
    encoded = base64.b64encode(png_bytes(fig)).decode("ascii")
    return Markup(_PARTS.image(f"data:image/png;base64,{encoded}", alt))
