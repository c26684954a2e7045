"""A tenant's daily report: one self-contained HTML file with inline SVG plots.

Volume per hour, the label mix of each group over the day, accuracy per model version
as labels arrive (cumulative, against every label that had arrived by then), dead
letters per stage and error. Read from the store itself (aggregates in SQL, through the
tenant's transaction), so its numbers are the store's; a table under each plot
carries them. Written to ``DIR/reports/<tenant>/<day>.html``.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, case, func, select

from inferstream.errors import MissingExtraError
from inferstream.store import ResultsStore, schema

HOUR_US = 3_600_000_000
#: Groups drawn one by one (the busiest); the rest are counted in the volume.
MAX_GROUPS = 8


@dataclass
class DailyFigures:
    """The numbers a report shows, all from the store."""

    tenant: str
    day: dt.date
    volume: list[int] = field(default_factory=lambda: [0] * 24)
    #: group -> label -> count per hour
    mix: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: (model name, version, role) -> hour (-1: before the day) -> (labelled, correct)
    accuracy: dict[tuple[str, str, str], dict[int, tuple[int, int]]] = field(default_factory=dict)
    #: (stage, error type) -> count
    dead_letters: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.volume)


def day_bounds(day: dt.date) -> tuple[int, int]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    first = int(start.timestamp()) * 1_000_000
    return first, first + 24 * HOUR_US


def read_figures(store: ResultsStore, tenant: str, day: dt.date) -> DailyFigures:
    start, end = day_bounds(day)
    figures = DailyFigures(tenant, day)
    with store.tenant_transaction(tenant, "read the daily report's figures from") as conn:
        for hour, count in conn.execute(_volume(tenant, start, end)):
            figures.volume[int(hour)] = int(count)
        for group, label, hour, count in conn.execute(_mix(tenant, start, end)):
            per_label = figures.mix.setdefault(str(group), {})
            per_label.setdefault(str(label), [0] * 24)[int(hour)] = int(count)
        for name, version, role, bucket, labelled, correct in conn.execute(
            _accuracy(tenant, start, end)
        ):
            hours = figures.accuracy.setdefault((str(name), str(version), str(role)), {})
            hours[int(bucket)] = (int(labelled), int(correct or 0))
        for stage, error, count in conn.execute(_dead_letters(tenant, start, end)):
            figures.dead_letters[(str(stage), str(error))] = int(count)
    return figures


def _hour(column: Any, start: int) -> Any:
    """The hour of the day (0-23) a time falls in; -1 before the day."""
    return case((column < start, -1), else_=(column - start) // HOUR_US).label("hour")


def _volume(tenant: str, start: int, end: int) -> Select[Any]:
    r = schema.records.c
    hour = _hour(r.stored_at_us, start)
    window = (r.tenant == tenant, r.stored_at_us >= start, r.stored_at_us < end)
    return select(hour, func.count()).where(*window).group_by(hour)


def _mix(tenant: str, start: int, end: int) -> Select[Any]:
    r = schema.records.c
    hour = _hour(r.stored_at_us, start)
    group = func.coalesce(r.group_key, "").label("group")
    window = (r.tenant == tenant, r.stored_at_us >= start, r.stored_at_us < end)
    return select(group, r.label, hour, func.count()).where(*window).group_by(group, r.label, hour)


def _accuracy(tenant: str, start: int, end: int) -> Select[Any]:
    """Labelled and correct predictions per model version, by the hour their label came
    (a negative hour: before the day), as :meth:`ResultsStore.accuracy_by_model_version`
    pairs them."""
    p, r, f = schema.predictions.c, schema.records.c, schema.feedback.c
    hour = _hour(f.at_us, start)
    correct = func.sum(case((p.label == f.label, 1), else_=0))
    return (
        select(p.model_name, p.model_version, p.role, hour, func.count(), correct)
        .join(schema.records, and_(r.tenant == p.tenant, r.id == p.record_id))
        .join(
            schema.feedback,
            and_(f.tenant == r.tenant, f.app == r.app, f.subject == r.subject, f.head == p.head),
        )
        .where(p.tenant == tenant, f.at_us < end)
        .group_by(p.model_name, p.model_version, p.role, hour)
    )


def _dead_letters(tenant: str, start: int, end: int) -> Select[Any]:
    d = schema.dead_letters.c
    window = (d.tenant == tenant, d.at_us >= start, d.at_us < end)
    return (
        select(d.stage, d.error_type, func.count()).where(*window).group_by(d.stage, d.error_type)
    )


def cumulative(hours: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """(labelled, correct) by the end of each hour of the day, counting earlier labels."""
    labelled, correct = hours.get(-1, (0, 0))
    out = []
    for hour in range(24):
        more = hours.get(hour, (0, 0))
        labelled, correct = labelled + more[0], correct + more[1]
        out.append((labelled, correct))
    return out


# -- rendering --------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "analytics") from exc
    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # text as text: a third of the size
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _volume_plot(figures: DailyFigures) -> str:
    fig, ax = _pyplot().subplots(figsize=(8, 2.6))
    ax.bar(range(24), figures.volume, color="#4477aa")
    ax.set(xlabel="hour (UTC)", ylabel="records", title="Volume per hour")
    return _svg(fig)


def _mix_plot(group: str, per_label: dict[str, list[int]]) -> str:
    fig, ax = _pyplot().subplots(figsize=(8, 2.2))
    labels = sorted(per_label)
    ax.stackplot(range(24), *(per_label[label] for label in labels), labels=labels)
    ax.set(xlabel="hour (UTC)", ylabel="records", title=f"Label mix of {group}")
    ax.legend(loc="upper left", fontsize="small")
    return _svg(fig)


def _accuracy_plot(figures: DailyFigures) -> str:
    fig, ax = _pyplot().subplots(figsize=(8, 2.6))
    for (name, version, role), hours in sorted(figures.accuracy.items()):
        points = cumulative(hours)
        ys = [c / n if n else float("nan") for n, c in points]
        ax.plot(range(24), ys, marker=".", label=f"{name} {version} ({role})")
    ax.set(xlabel="hour (UTC)", ylabel="accuracy", ylim=(0, 1.05))
    ax.set_title("Accuracy per model version as labels arrive")
    if figures.accuracy:
        ax.legend(loc="lower left", fontsize="small")
    return _svg(fig)


def _dead_letters_plot(figures: DailyFigures) -> str:
    fig, ax = _pyplot().subplots(figsize=(8, 2.2))
    reasons = sorted(figures.dead_letters)
    ax.barh([f"{stage}: {error}" for stage, error in reasons],
            [figures.dead_letters[r] for r in reasons], color="#cc6677")  # fmt: skip
    ax.set(xlabel="dead letters", title="Dead letters per stage and error")
    return _svg(fig)


def _table(id_: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table id="{id_}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(id_: str, title: str, plot: str, table: str) -> str:
    return (
        f'<section id="{id_}"><h2>{html.escape(title)}</h2>'
        f'<div class="plot">{plot}</div>{table}</section>'
    )


def render(figures: DailyFigures) -> str:
    """The report as one HTML document (no external resources)."""
    busiest = sorted(figures.mix, key=lambda g: -sum(map(sum, figures.mix[g].values())))
    mixes = "".join(_mix_plot(g, figures.mix[g]) for g in busiest[:MAX_GROUPS])
    mix_rows = [
        (group, label, sum(counts))
        for group in busiest
        for label, counts in sorted(figures.mix[group].items())
    ]
    accuracy_rows = []
    for (name, version, role), hours in sorted(figures.accuracy.items()):
        labelled, correct = cumulative(hours)[-1]
        share = f"{correct / labelled:.3f}" if labelled else "-"
        accuracy_rows.append((name, version, role, labelled, correct, share))
    sections = [
        _section("volume", f"Volume: {figures.total} records", _volume_plot(figures),
                 _table("volume-table", ("hour", "records"),
                        [(h, n) for h, n in enumerate(figures.volume) if n])),
        _section("mix", "Label mix per group", mixes,
                 _table("mix-table", ("group", "label", "records"), mix_rows)),
        _section("accuracy", "Accuracy per model version", _accuracy_plot(figures),
                 _table("accuracy-table", ("model", "version", "role", "labelled", "correct",
                                           "accuracy"), accuracy_rows)),
        _section("dead-letters", "Dead letters", _dead_letters_plot(figures),
                 _table("dead-letters-table", ("stage", "error", "count"),
                        [(s, e, n) for (s, e), n in sorted(figures.dead_letters.items())])),
    ]  # fmt: skip
    title = f"Daily report of {figures.tenant} for {figures.day.isoformat()} (UTC)"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


_STYLE = (
    "body{font-family:sans-serif;max-width:60rem;margin:auto;padding:1rem}"
    "table{border-collapse:collapse;margin:.5rem 0 1.5rem}"
    "td,th{border:1px solid #ccc;padding:.15rem .5rem;text-align:left}"
    ".plot svg{max-width:100%;height:auto}"
)


def report_path(folder: Path, tenant: str, day: dt.date) -> Path:
    return folder / "reports" / tenant / f"{day.isoformat()}.html"


def write_report(store: ResultsStore, folder: Path, tenant: str, day: dt.date) -> Path:
    """Render the report and write it (atomically) where the API serves it from."""
    path = report_path(folder, tenant, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(render(read_figures(store, tenant, day)))
    os.replace(temporary, path)
    return path
