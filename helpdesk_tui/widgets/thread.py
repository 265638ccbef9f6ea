"""The threaded history of a ticket: customer mail, replies, internal notes and system lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.reactive import var
from textual.widgets import Static

from helpdesk_tui.text import relative_time
from store.sanitize import clean_line, clean_text

#: The label on each kind of entry's border; a note must never look like a reply.
KIND_LABELS = {
    "email_in": "CUSTOMER",
    "email_out": "REPLY",
    "note": "INTERNAL NOTE",
    "phone": "PHONE",
    "system": "SYSTEM",
}

#: Entries of a long thread mounted before the first paint: the newest ones, enough to fill
#: a tall terminal (the thread opens on the newest entry). The older ones are mounted above
#: them right after, so a 50-entry ticket paints as fast as a short one.
FIRST_BATCH = 8

DELIVERY_LABELS = {
    "queued": "queued for delivery",
    "sent": "sent",
    "failed": "DELIVERY FAILED",
    "cancelled": "cancelled",
}


def human_size(size: int) -> str:
    """`532 B`, `12.3 KB`, `4.0 MB` (powers of 1024, as file managers show)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def format_moment(moment: datetime | None, now: datetime | None) -> str:
    """An absolute local time plus how long ago: `2026-10-24 09:00 (9d)`."""
    if moment is None:
        return ""
    text = moment.astimezone().strftime("%Y-%m-%d %H:%M")
    if now is not None:
        ago = relative_time(moment, now)
        if ago:
            text += f" ({ago})"
    return text


@dataclass(frozen=True)
class AttachmentInfo:
    """An attachment as the thread shows it."""

    id: int
    article_id: int
    filename: str
    mime_type: str
    size: int
    sha256: str
    inline: bool = False

    @property
    def display_name(self) -> str:
        return clean_line(self.filename) or "(unnamed)"


@dataclass(frozen=True)
class ArticleInfo:
    """One thread entry, read out of the store (comparable, so reloads redraw only changes)."""

    id: int
    kind: str
    author: str
    from_addr: str
    to_addrs: str
    cc_addrs: str
    created_at: datetime | None
    body: str
    quoted: str
    #: The mail had an HTML part; the text shown is the store's conversion (or its plain part).
    has_html: bool
    delivery_status: str | None
    delivery_error: str | None
    attachments: tuple[AttachmentInfo, ...] = ()

    @classmethod
    def from_article(cls, article: Any, customer: str = "") -> ArticleInfo:
        """Snapshot an `Article` (author and attachments loaded); `customer` names inbound mail."""
        agent = article.author_agent
        if article.kind == "email_in":
            author = article.from_addr or customer
        elif agent is not None:
            author = agent.name or agent.login
        elif article.kind == "system":
            author = "helpdesk"
        else:
            author = article.from_addr or ""
        return cls(
            id=article.id,
            kind=article.kind,
            author=clean_line(author),
            from_addr=clean_line(article.from_addr),
            to_addrs=clean_line(article.to_addrs),
            cc_addrs=clean_line(article.cc_addrs),
            created_at=article.created_at,
            body=clean_text(article.body_text or ""),
            quoted=clean_text(article.quoted_text or ""),
            has_html=bool(article.body_html),
            delivery_status=article.delivery_status,
            delivery_error=clean_line(article.delivery_error) or None,
            attachments=tuple(
                AttachmentInfo(
                    id=a.id,
                    article_id=article.id,
                    filename=a.filename,
                    mime_type=clean_line(a.mime_type),
                    size=int(a.size),
                    sha256=a.sha256,
                    inline=bool(a.inline),
                )
                for a in article.attachments
            ),
        )

    @property
    def internal(self) -> bool:
        return self.kind == "note"

    @property
    def quoted_lines(self) -> int:
        return len(self.quoted.strip("\n").splitlines()) if self.quoted.strip() else 0


def render_article(info: ArticleInfo, *, show_quotes: bool, now: datetime | None) -> Content:
    """The body of one entry: a who/when line, the text, the folded quote, the attachments.

    Every piece of it was cleaned when the `ArticleInfo` was made; nothing is markup.
    """
    when = format_moment(info.created_at, now)
    if info.kind == "system":
        return Content.assemble(
            ("· ", "dim"), (info.body.strip(), "dim italic"), (f"  {when}", "dim")
        )
    parts: list[str | tuple[str, str]] = []
    if info.kind == "email_out":
        parts += [
            (info.author or "agent", "bold"),
            (" → ", "dim"),
            (info.to_addrs or "(no recipient)", ""),
        ]
        if info.cc_addrs:
            parts += [("  cc ", "dim"), (info.cc_addrs, "")]
    elif info.kind == "note":
        parts += [
            ("Internal note by ", "$warning"),
            (info.author or "agent", "bold $warning"),
            (" — not visible to the customer", "$warning"),
        ]
    else:
        parts += [(info.author or "(unknown sender)", "bold")]
        if info.cc_addrs:
            parts += [("  cc ", "dim"), (info.cc_addrs, "")]
    parts += [("  ", ""), (when, "dim")]
    if info.has_html:
        parts.append(("  html shown as text", "dim italic"))
    parts.append(("\n\n", ""))
    body = info.body.strip("\n")
    if body:
        parts.append((body, ""))
    elif info.has_html:
        parts.append(("(HTML-only mail with no readable text)", "dim italic"))
    else:
        parts.append(("(empty)", "dim italic"))
    if info.quoted_lines:
        if show_quotes:
            quoted = "\n".join(f"> {line}" for line in info.quoted.strip("\n").splitlines())
            parts += [("\n\n", ""), (quoted, "dim italic")]
        else:
            count = info.quoted_lines
            noun = "line" if count == 1 else "lines"
            parts += [
                ("\n\n", ""),
                (f"▸ {count} quoted {noun} hidden (T shows them)", "dim italic"),
            ]
    for att in info.attachments:
        parts += [
            ("\n", ""),
            ("Attachment: ", "bold"),
            (att.display_name, "underline"),
            (f"  {human_size(att.size)}  {att.mime_type}", "dim"),
        ]
    return Content.assemble(*parts)


class ArticleView(Static):
    """One entry of the thread, styled by its kind (`-email_in`, `-note`, ...)."""

    DEFAULT_CSS = """
    ArticleView {
        width: 1fr;
        height: auto;
        padding: 0 1;
        margin: 0 0 1 0;
    }
    ArticleView.-email_in {
        border: round $primary 70%;
        border-title-color: $primary;
    }
    ArticleView.-email_out {
        border: round $success 80%;
        border-title-color: $success;
        border-subtitle-color: $success;
    }
    ArticleView.-email_out.-failed {
        border-subtitle-color: $error;
        border-subtitle-style: bold;
    }
    ArticleView.-note {
        border: heavy $warning;
        background: $warning 10%;
        border-title-color: $warning;
        border-title-style: bold reverse;
    }
    ArticleView.-phone {
        border: round $accent 70%;
        border-title-color: $accent;
    }
    ArticleView.-system {
        border: none;
        padding: 0 2;
        margin: 0 0 1 0;
        color: $text-muted;
    }
    """

    info: var[ArticleInfo | None] = var(None)
    show_quotes: var[bool] = var(False)

    def __init__(self, info: ArticleInfo, *, show_quotes: bool, now: datetime | None) -> None:
        super().__init__(classes=f"-{info.kind}")
        self.set_reactive(ArticleView.info, info)
        self.set_reactive(ArticleView.show_quotes, show_quotes)
        self.now = now
        self._decorate()

    def on_mount(self) -> None:
        self._redraw()

    def watch_info(self) -> None:
        self._decorate()
        self._redraw()

    def watch_show_quotes(self) -> None:
        self._redraw()

    def _decorate(self) -> None:
        info = self.info
        if info is None:
            return
        self.set_class(info.delivery_status == "failed", "-failed")
        if info.kind == "system":
            return
        self.border_title = Content(f" {KIND_LABELS.get(info.kind, info.kind.upper())} ")
        subtitle = ""
        if info.kind == "email_out" and info.delivery_status:
            subtitle = DELIVERY_LABELS.get(info.delivery_status, info.delivery_status)
            if info.delivery_status == "failed" and info.delivery_error:
                subtitle += f": {info.delivery_error}"
        elif info.internal:
            subtitle = "internal"
        self.border_subtitle = Content(f" {subtitle} ") if subtitle else None

    def _redraw(self) -> None:
        if self.info is not None:
            self.update(render_article(self.info, show_quotes=self.show_quotes, now=self.now))


class ThreadView(VerticalScroll, can_focus=True):
    """The whole history, oldest first; opens on the newest entry; keeps its place on reload."""

    DEFAULT_CSS = """
    ThreadView {
        height: 1fr;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    ThreadView:focus {
        background-tint: $foreground 0%;
    }
    ThreadView #thread-empty {
        color: $text-muted;
        padding: 1 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "j,down",
            "scroll_lines(1)",
            "Down",
            show=False,
            id="thread.down",
            tooltip="Scroll the thread down a line",
        ),
        Binding(
            "k,up",
            "scroll_lines(-1)",
            "Up",
            show=False,
            id="thread.up",
            tooltip="Scroll the thread up a line",
        ),
        Binding(
            "ctrl+d",
            "half_page(1)",
            "Half page down",
            show=False,
            id="thread.half_down",
            tooltip="Scroll down half a screen",
        ),
        Binding(
            "ctrl+u",
            "half_page(-1)",
            "Half page up",
            show=False,
            id="thread.half_up",
            tooltip="Scroll up half a screen",
        ),
        Binding(
            "g,home",
            "scroll_home",
            "Top",
            show=False,
            id="thread.top",
            tooltip="Go to the first entry",
        ),
        Binding(
            "G,end",
            "scroll_end",
            "Bottom",
            show=False,
            id="thread.bottom",
            tooltip="Go to the end of the thread",
        ),
        Binding(
            "right_square_bracket",
            "jump(1)",
            "Next entry",
            show=False,
            id="thread.next",
            tooltip="Jump to the next entry",
        ),
        Binding(
            "left_square_bracket",
            "jump(-1)",
            "Previous entry",
            show=False,
            id="thread.previous",
            tooltip="Jump to the previous entry",
        ),
    ]

    #: The entries to show, oldest first (pushed down by the ticket screen).
    articles: var[tuple[ArticleInfo, ...]] = var(())
    #: Whether quoted earlier text is unfolded.
    show_quotes: var[bool] = var(False)
    #: "Now" for the relative ages (the store's clock, frozen in tests).
    now: var[datetime | None] = var(None)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._opened = False

    def compose(self) -> ComposeResult:
        yield Static(Content("No entries yet."), id="thread-empty")

    # ----------------------------------------------------------------- data
    def watch_articles(self, old: tuple[ArticleInfo, ...], new: tuple[ArticleInfo, ...]) -> None:
        views = list(self.query_children(ArticleView))
        old_ids = [v.info.id for v in views if v.info is not None]
        new_ids = [a.id for a in new]
        if views and new_ids[: len(old_ids)] == old_ids:
            # Same history with additions: update in place, keep the scroll position.
            for view, info in zip(views, new, strict=False):
                if view.info != info:
                    view.now = self.now
                    view.info = info
            added = [self._view(info) for info in new[len(old_ids) :]]
            if added:
                self.mount_all(added)
            return
        if views:
            self.remove_children(ArticleView)
        self.query_one("#thread-empty").display = not new
        if not new:
            return
        if not self._opened:
            self._opened = True
            self.mount_all([self._view(info) for info in new[-FIRST_BATCH:]])
            self.call_after_refresh(self._opened_on_latest, new)
            return
        self.mount_all([self._view(info) for info in new])

    def _opened_on_latest(self, articles: tuple[ArticleInfo, ...]) -> None:
        self.scroll_to_latest()
        if len(articles) > FIRST_BATCH:
            self.call_after_refresh(self._mount_older, articles)

    async def _mount_older(self, articles: tuple[ArticleInfo, ...]) -> None:
        """Mount the entries the first paint left out, above, keeping what is on screen."""
        views = list(self.query_children(ArticleView))
        if self.articles is not articles or not views:
            return  # reloaded meanwhile: the whole thread was mounted again
        older = articles[: len(articles) - len(views)]
        if not older:
            return
        from_bottom = self.max_scroll_y - self.scroll_y
        if from_bottom <= 0:
            # At the end (the usual case): the anchor keeps it there through the layout.
            self.anchor()
            await self.mount_all([self._view(info) for info in older], before=views[0])
            self.call_after_refresh(self.anchor, False)
        else:
            await self.mount_all([self._view(info) for info in older], before=views[0])
            self.call_after_refresh(self._keep_from_bottom, from_bottom)

    def _keep_from_bottom(self, from_bottom: float) -> None:
        self.scroll_to(y=max(0, self.max_scroll_y - from_bottom), animate=False, immediate=True)

    def _view(self, info: ArticleInfo) -> ArticleView:
        return ArticleView(info, show_quotes=self.show_quotes, now=self.now)

    def watch_show_quotes(self, show: bool) -> None:
        for view in self.query_children(ArticleView):
            view.show_quotes = show

    # ----------------------------------------------------------------- moving
    def scroll_to_latest(self) -> None:
        """Show the start of the newest entry that is not a system line."""
        views = [v for v in self.query_children(ArticleView) if v.info and v.info.kind != "system"]
        if views:
            self.scroll_to_widget(views[-1], animate=False, top=True)
        else:
            self.scroll_end(animate=False)

    def action_scroll_lines(self, lines: int) -> None:
        self.scroll_relative(y=lines, animate=False)

    def action_half_page(self, direction: int) -> None:
        self.scroll_relative(
            y=direction * max(1, self.scrollable_content_region.height // 2), animate=False
        )

    def action_scroll_home(self) -> None:
        self.scroll_home(animate=False)

    def action_scroll_end(self) -> None:
        self.scroll_end(animate=False)

    def action_jump(self, direction: int) -> None:
        views = list(self.query_children(ArticleView))
        if not views:
            return
        top = self.scroll_y
        offsets = [v.virtual_region.y for v in views]
        if direction > 0:
            target = next((v for v, y in zip(views, offsets, strict=True) if y > top + 0.5), None)
        else:
            before = [v for v, y in zip(views, offsets, strict=True) if y < top - 0.5]
            target = before[-1] if before else None
        if target is not None:
            self.scroll_to_widget(target, animate=False, top=True)

    def entries(self) -> Sequence[ArticleInfo]:
        """The entries shown, oldest first."""
        return self.articles
