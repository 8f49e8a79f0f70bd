"""A step's `chat_template` setting and mergepkg's built-in chat templates (docs/tokenizers.md).

`chat_template = "auto" | "<built-in name>" | "<model of the step>" | "<Jinja text>"`, as
mergekit's `chat_template` option, plus a model's name:

- `"auto"`: the template most of the step's models have (as mergekit picks it);
- a built-in name (`chatml`, `llama3`, `mistral`, `alpaca`, `exaone`): mergepkg's own
  template of that chat format, `chat_templates/<name>.jinja` beside this module (each
  file names the published description it was written from);
- the name of a model the step reads: that model's template;
- anything holding `{{` or `{%`: the template itself.

The layout decides the text (`layout/chat.py`: it needs the models' files); the engine
writes it as transformers does (`engine/side_files.py`).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Literal

from mergepkg.errors import did_you_mean
from mergepkg.recipe.tables import TableReader

AUTO = "auto"
Kind = Literal["auto", "builtin", "model", "text"]


@functools.cache
def builtin_names() -> tuple[str, ...]:
    """The names of the built-in templates, sorted."""
    folder = resources.files(__package__).joinpath("chat_templates")
    return tuple(sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja")))


@functools.cache
def builtin_template(name: str) -> str:
    """The text of built-in template `name` (one of `builtin_names()`)."""
    return resources.files(__package__).joinpath("chat_templates", f"{name}.jinja").read_text(encoding="utf-8")


def is_template_text(value: str) -> bool:
    """Whether a setting is a template itself rather than a name: it has a Jinja tag."""
    return "{{" in value or "{%" in value


def syntax_problem(text: str) -> str | None:
    """What Jinja finds wrong with a template's syntax, read as transformers compiles chat
    templates (loop controls, and `{% generation %}` blocks); None: it parses."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols

    class Generation(Extension):  # transformers' AssistantTracker: {% generation %} ... {% endgeneration %}
        tags = {"generation"}  # noqa: RUF012 - jinja2 reads the class attribute

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    try:
        jinja2.Environment(extensions=[loopcontrols, Generation]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        return f"line {e.lineno} of the template: {e.message}"
    return None


def template_kind(value: str, models: tuple[str, ...]) -> Kind:
    """What a parsed setting (`Step.chat_template`) names, for a step reading `models`."""
    if value in models:
        return "model"
    if value == AUTO:
        return "auto"
    if value in builtin_names():
        return "builtin"
    return "text"


def chat_template_setting(r: TableReader, value: Any, key: str, models: tuple[str, ...]) -> str | None:
    """The step's `chat_template` as written (checked): None when it is not set."""
    if value is None:
        return None
    forms = '"auto", a built-in template (' + ", ".join(builtin_names()) + "), a model of this step or Jinja text"
    r.expect(value, str, key, forms)
    keywords = (AUTO, *builtin_names())
    if value in models and value in keywords:
        what = '"auto"' if value == AUTO else "a built-in template"
        raise r.error(
            key,
            f"{value!r} names both a model of this step and {what}",
            "rename the model, or write the template's text",
        )
    if value in models or value in keywords:
        return value
    if is_template_text(value):
        if (problem := syntax_problem(value)) is not None:
            raise r.error(key, f"the chat template does not compile: {problem}", "fix the Jinja syntax")
        return value
    if not value.strip():
        raise r.error(key, "expected a chat template, got an empty string", f"expected {forms}")
    close = did_you_mean(value, [*keywords, *models])
    raise r.error(
        key,
        f"unknown chat template {value!r}: not a built-in template, not a model of this step "
        f"and not a Jinja template (it has no {{{{ or {{%)",
        close if close and close.startswith("did you mean") else f"expected {forms}",
    )
