"""Progress bars: tqdm.auto, except that in a notebook a finished bar leaves text, not a
widget, and a headless run (`qat run`, `qat report`) gets plain text bars.

tqdm's notebook bar is an ipywidget; a saved notebook keeps only a reference to its model, so
after a browser reload (or in an executed copy under reports/) every finished bar showed
"Error displaying widget: model not found". Here the bar is displayed with a display id and,
when it closes, that output is replaced by the bar's final text (or by nothing, for bars
with leave=False), which any notebook viewer renders.

A headless run sets $QAT_PROGRESS=text (qat.notebooks) for the kernels it starts: their bars
are then tqdm's text bars on stderr, which papermill streams to the terminal while the
notebook runs (a widget there would show nothing until it closed).
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm as _auto
from tqdm.std import tqdm as _text

ENV = "QAT_PROGRESS"  # "text": plain text bars, whatever the frontend
TEXT = "text"

try:
    from tqdm.notebook import tqdm as _notebook
except ImportError:  # no ipywidgets: tqdm.auto is the text bar
    _notebook = None

if os.environ.get(ENV) == TEXT:

    class tqdm(_text):
        def __init__(self, *args, **kwargs):
            # A redraw at most every 2 s: the bar's text is kept in the executed notebook.
            kwargs.setdefault("mininterval", 2.0)
            super().__init__(*args, **kwargs)

elif _notebook is not None and issubclass(_auto, _notebook):

    class tqdm(_auto):
        def __init__(self, *args, **kwargs):
            from IPython.display import display

            kwargs["display"] = False
            super().__init__(*args, **kwargs)
            self._handle = None
            if not self.disable and getattr(self, "container", None) is not None:
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            if self.disable or self._handle is None:
                return super().close()
            done = self.total is None or self.n >= self.total
            super().close()
            from IPython.display import Pretty

            text = self.format_meter(**self.format_dict) if (self.leave or not done) else ""
            self._handle.update(Pretty(text))
            self._handle = None

else:
    tqdm = _auto

__all__ = ["ENV", "TEXT", "tqdm"]
