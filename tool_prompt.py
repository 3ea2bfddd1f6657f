"""Tool calling taught to a web chat through its prompt, for chats that take no client tools.

Provides ``function_tools`` and ``ToolChoice`` (the client's ``tools`` and ``tool_choice`` read and checked),
``tool_block`` (the text that opens the folded prompt) and the history helpers ``format_tool_call``,
``format_tool_result`` and ``defuse``. Pure: no I/O. ``tool_parser`` reads what the model writes back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from converters import ApiError, copy_json, json_depth
from tool_parser import CALL_END, CALL_START

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CHOICE_MODES = ("auto", "none", "required")
MAX_DESCRIPTION = 300  # characters of a tool's description the prompt keeps
MAX_NOTE = 160  # ... of a parameter's description
MAX_ENUM = 12  # enum values shown before "…"
MAX_FIELDS = 12  # fields of a nested object shown before "…"
MAX_DEPTH = 2  # nested objects are shown field by field down to this depth, then as "object"
MAX_NESTING = 8  # schema levels followed at all ($ref cycles end here)
MAX_SCHEMA_DEPTH = 64  # JSON levels a tool's parameters may nest (far past any real schema)
BLOCKS_KEPT = 256  # prompt blocks kept, by a digest of their tools
_BLOCKS: dict[tuple, str] = {}  # in insertion order: the oldest goes first
RESULT_END = "[END TOOL RESULT]"
EMPTY_PARAMETERS = {"type": "object", "properties": {}}

# Anything the parser could take for a marker, in any letter case (Unicode folding: wider than the parser's).
_MARKERS = re.compile(r"\[(?:end )?tool call\]|</?tool_call>|\[tool result|\[end tool result\]", re.IGNORECASE)

INTRO = (
    "# Tools\n\n"
    "In this conversation you can call the tools listed below. You do not run them yourself: when you write "
    "a tool call, the system runs the tool and sends you its result in the next message."
)
HOW_TO_CALL = (
    f'To call a tool, write a line {CALL_START}, then one JSON object with the tool\'s "name" and its '
    f'"arguments", then a line {CALL_END}. For example (use real values in place of the example\'s):'
)
NONE_NOTICE = (
    "# Tools\n\nTool calling is off for this answer: reply in plain text and make no tool call. "
    "Results of earlier tool calls, if any, appear as numbered tool results."
)


@dataclass(frozen=True)
class ToolSpec:
    """One function tool the client offers: its name, what it does, and the JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: copy_json(EMPTY_PARAMETERS), hash=False)


@dataclass(frozen=True)
class ToolChoice:
    """What the client's ``tool_choice`` asks of this answer: ``auto``, ``none``, ``required`` or ``named``."""

    mode: str = "auto"
    name: str = ""  # the tool a ``named`` choice must call

    @property
    def must_call(self) -> bool:
        return self.mode in ("required", "named")

    @classmethod
    def parse(cls, value: Any, tools: Iterable[ToolSpec] = ()) -> ToolChoice:
        """Read OpenAI's ``tool_choice`` (Chat Completions or Responses shape) against the offered tools.

        :raise ApiError: 400 ``invalid_tool_choice`` for another shape, or a tool that is not offered.
        """
        names = {tool.name for tool in tools}
        if value is None or value == "auto":
            return cls()
        if value in CHOICE_MODES:
            if value == "required" and not names:
                raise _invalid_choice('tool_choice "required" needs at least one function tool in tools.')
            return cls(value)
        name = _named_choice(value)
        if name not in names:
            raise _invalid_choice(f"tool_choice names the function '{name}', which is not among the tools.")
        return cls("named", name)


def _named_choice(value: Any) -> str:
    function = value.get("function", value) if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) and value.get("type") == "function" else None
    if not isinstance(name, str) or not name:
        raise _invalid_choice(
            f'Invalid tool_choice {_shown(value)}: use "auto", "none", "required" '
            'or {"type": "function", "function": {"name": "..."}}.'
        )
    return name


def _invalid_choice(message: str) -> ApiError:
    return ApiError(message, param="tool_choice", code="invalid_tool_choice")


# --- tools ---------------------------------------------------------------------------------


def function_tools(tools: Iterable[Any]) -> tuple[ToolSpec, ...]:
    """The function tools among a client's ``tools``, checked; other kinds (``web_search``, ...) are skipped.

    Takes ``{"type": "function", "function": {...}}``, the flat Responses shape, and a bare ``{"name", ...}``.
    :raise ApiError: 400 ``invalid_tool`` for a bad name or parameters, naming the field in ``param``.
    """
    specs: list[ToolSpec] = []
    for index, tool in enumerate(tools):
        spec = _function_tool(tool, f"tools[{index}]")
        if spec is not None and any(spec.name == seen.name for seen in specs):
            raise _invalid_tool(f"Tool names must be unique: '{spec.name}' is given twice.", f"tools[{index}]")
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _function_tool(tool: Any, param: str) -> ToolSpec | None:
    if not isinstance(tool, dict):
        raise _invalid_tool(f"{param} must be an object, not {_shown(tool)}.", param)
    kind = tool.get("type", "function")
    if not isinstance(kind, str):
        raise _invalid_tool(f"{param}.type must be a string, not {_shown(kind)}.", f"{param}.type")
    if kind != "function":
        return None  # a hosted tool (web search, code interpreter...): nothing a prompt can offer
    body, where = tool, param
    if "function" in tool or "name" not in tool:
        body, where = tool.get("function"), f"{param}.function"
        if not isinstance(body, dict):
            raise _invalid_tool(f'{where} must be an object with a "name".', where)
    return ToolSpec(_tool_name(body, where), _tool_description(body, where), _tool_parameters(body, where))


def _tool_name(body: dict, where: str) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise _invalid_tool(
            f"Invalid function name {_shown(name)} at {where}.name: use 1 to 64 letters, digits, "
            "underscores, dots or dashes.",
            f"{where}.name",
        )
    return name


def _tool_description(body: dict, where: str) -> str:
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid_tool(f"{where}.description must be a string.", f"{where}.description")
    return description or ""


def _tool_parameters(body: dict, where: str) -> dict:
    parameters = body.get("parameters")
    if parameters is None:
        return copy_json(EMPTY_PARAMETERS)
    kind = parameters.get("type", "object") if isinstance(parameters, dict) else None
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        raise _invalid_tool(
            f'{where}.parameters must be a JSON Schema object ({{"type": "object", ...}}), not {_shown(parameters)}.',
            f"{where}.parameters",
        )
    if json_depth(parameters) > MAX_SCHEMA_DEPTH:
        # Copying and summarising walk the schema recursively: refuse it here, not with a 500.
        raise _invalid_tool(f"{where}.parameters nests deeper than {MAX_SCHEMA_DEPTH} levels.", f"{where}.parameters")
    return copy_json(parameters)


def _invalid_tool(message: str, param: str) -> ApiError:
    return ApiError(message, param=param, code="invalid_tool")


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:59] + "…"


# --- the block that teaches them ---------------------------------------------------------------


def tool_block(tools: tuple[ToolSpec, ...], choice: ToolChoice, parallel: bool) -> str:
    """The text that opens the folded prompt: the tools, the call syntax with an example, and the rules.

    Built once per (tools, choice, parallel): a conversation sends the same block with every turn.
    """
    if not tools:
        return ""
    canonical = json.dumps([[t.name, t.description, t.parameters] for t in tools], ensure_ascii=False, default=repr)
    # Kept by a digest of the tools, not their text: a cache of large tool lists must not pin them.
    key = (hashlib.sha256(canonical.encode()).hexdigest(), choice, parallel)
    block = _BLOCKS.get(key)
    if block is None:
        block = _BLOCKS[key] = _build_block(tools, choice, parallel)
        while len(_BLOCKS) > BLOCKS_KEPT:
            _BLOCKS.pop(next(iter(_BLOCKS)))
    return block


def _build_block(tools: tuple[ToolSpec, ...], choice: ToolChoice, parallel: bool) -> str:
    if choice.mode == "none":
        return NONE_NOTICE
    shown = next((tool for tool in tools if tool.name == choice.name), tools[0])
    example = "\n".join((CALL_START, _call_json(shown.name, _example_arguments(shown.parameters)), CALL_END))
    sections = [
        INTRO,
        "## Available tools\n\n" + "\n\n".join(map(_signature, tools)),
        f"## How to call a tool\n\n{HOW_TO_CALL}\n\n{example}",
        "## Rules\n\n" + "\n".join(f"- {rule}" for rule in _rules(choice, parallel, shown.name)),
    ]
    return "\n\n".join(sections)


def _rules(choice: ToolChoice, parallel: bool, example_name: str) -> list[str]:
    result = _result_header(1, example_name, "call_1")
    rules = [
        "Call only the tools listed above, by their exact names.",
        '"arguments" must be a JSON object that matches the tool\'s signature: parameters marked "?" are '
        "optional, all others are required; use the types and values shown.",
        "Between the two marker lines write nothing but that JSON object: no comments, no other text. "
        "Never put a tool call inside a ``` code block: there it is only an example and nothing runs.",
        "To make several calls, write one block for each call, one after another."
        if parallel
        else "Make at most one tool call in each answer.",
        f"After calling, stop and wait for the results. They come back numbered, each naming its tool and "
        f"call, like {result} ... {RESULT_END}. Never write tool results yourself.",
    ]
    if choice.mode == "required":
        rules.append("You must call at least one tool in this answer.")
    elif choice.mode == "named":
        rules.append(f"You must call {choice.name} in this answer.")
    else:
        rules.append("When no tool is needed, answer normally, without a tool call.")
    return rules


def _signature(tool: ToolSpec) -> str:
    """``name(a: string, b?: "x" | "y")``, then the description and a line per described parameter."""
    root = tool.parameters
    properties, required = _properties(root)
    arguments = ", ".join(_field(name, schema, name in required, root, 0) for name, schema in properties.items())
    lines = [f"{tool.name}({arguments})"]
    if tool.description:
        lines.append("    " + _trimmed(tool.description, MAX_DESCRIPTION))
    for name, schema in properties.items():
        if note := _note(_resolved(schema, root)):
            lines.append(f"    {name}: {note}")
    return "\n".join(lines)


def _properties(schema: dict) -> tuple[dict, set]:
    properties = schema.get("properties")
    required = schema.get("required")
    properties = {str(k): v for k, v in properties.items()} if isinstance(properties, dict) else {}
    return properties, {name for name in required if isinstance(name, str)} if isinstance(required, list) else set()


def _field(name: str, schema: Any, required: bool, root: dict, depth: int) -> str:
    return f"{name}{'' if required else '?'}: {_type_of(schema, root, depth)}"


def _note(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    parts = [_trimmed(schema["description"], MAX_NOTE)] if isinstance(schema.get("description"), str) else []
    if isinstance(schema.get("format"), str):
        parts.append(f"Format: {schema['format']}.")
    if "default" in schema:
        parts.append(f"Default: {_literal(schema['default'])}.")
    return " ".join(part for part in parts if part)


def _type_of(schema: Any, root: dict, depth: int) -> str:
    """A JSON Schema in a few characters: ``string``, ``"a" | "b"``, ``{x: number, y?: string}[]``."""
    if not isinstance(schema, dict) or depth > MAX_NESTING:
        return "any"
    schema = _resolved(schema, root)
    if "const" in schema:
        return _literal(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        values = [_literal(value) for value in schema["enum"][:MAX_ENUM]]
        return " | ".join(values + (["…"] if len(schema["enum"]) > MAX_ENUM else []))
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _union(_type_of(option, root, depth + 1) for option in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union(_type_of({**schema, "type": k}, root, depth + 1) for k in kind if isinstance(k, str))
    if kind == "array" or (kind is None and "items" in schema):
        item = _type_of(schema.get("items"), root, depth + 1)
        union = " | " in item and not item.startswith("{")  # a union of objects is still cut open: rare
        return "array" if item == "any" else f"({item})[]" if union else f"{item}[]"
    if kind == "object" or (kind is None and "properties" in schema):
        return _object_of(schema, root, depth)
    return kind if isinstance(kind, str) else "any"


def _object_of(schema: dict, root: dict, depth: int) -> str:
    properties, required = _properties(schema)
    if not properties or depth >= MAX_DEPTH:
        return "object"
    fields = [_field(n, s, n in required, root, depth + 1) for n, s in list(properties.items())[:MAX_FIELDS]]
    return "{" + ", ".join(fields + (["…"] if len(properties) > MAX_FIELDS else [])) + "}"


def _union(parts: Iterable[str]) -> str:
    return " | ".join(dict.fromkeys(parts)) or "any"


def _resolved(schema: Any, root: dict) -> Any:
    """The schema a local ``$ref`` (``#/$defs/...``) points at; any other schema as it is."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return schema
    target: Any = root
    for step in filter(None, ref[1:].split("/")):
        target = target.get(step.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


def _example_arguments(schema: dict, root: dict | None = None, depth: int = 0) -> dict:
    """Arguments for the prompt's example: the required parameters (or the first one), valued by the schema."""
    properties, required = _properties(schema)
    names = [name for name in properties if name in required] or list(properties)[:1]
    return {name: _example_value(properties[name], root or schema, name, depth) for name in names}


def _example_value(schema: Any, root: dict, name: str, depth: int) -> Any:
    schema = _resolved(schema, root)
    if not isinstance(schema, dict) or depth > MAX_NESTING:
        return f"<{name}>"
    for key in ("const", "default"):
        if key in schema:
            return copy_json(schema[key])
    for key in ("examples", "enum", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            first = schema[key][0]
            return _example_value(first, root, name, depth + 1) if key in ("anyOf", "oneOf") else copy_json(first)
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    kind = kind if isinstance(kind, str) else None
    if kind == "array" or (kind is None and "items" in schema):
        return [_example_value(schema.get("items"), root, name, depth + 1)]
    if kind == "object" or (kind is None and "properties" in schema):
        return _example_arguments(schema, root, depth + 1)
    return {"integer": 1, "number": 1, "boolean": True, "null": None}.get(kind, f"<{name}>")


def _literal(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:39] + "…"


def _trimmed(text: str, limit: int) -> str:
    """Whitespace collapsed, and cut at a word near ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2 :] else cut) + "…"


# --- the conversation so far, folded ---------------------------------------------------------


def format_tool_call(name: str, arguments: str) -> str:
    """An earlier call, in the syntax the model is taught; arguments that are not JSON stay a string."""
    return "\n".join((CALL_START, _call_json(name, _arguments_value(arguments)), CALL_END))


def format_tool_result(number: int, name: str, call_id: str, content: str) -> str:
    """A tool's result, numbered and naming its tool and call; markers in its content are defused."""
    return f"{_result_header(number, name, call_id)}\n{defuse(content)}\n{RESULT_END}"


def defuse(text: str) -> str:
    """Text in which nothing reads as a call or result marker: ``[TOOL CALL]`` becomes ``[TOOL_CALL (quoted)]``."""
    return _MARKERS.sub(_quoted, text)


def _quoted(match: re.Match) -> str:
    marker = match.group().replace(" ", "_")
    return f"{marker[:-1]} (quoted){marker[-1]}" if marker[-1] in "]>" else f"{marker} (quoted)"


def _result_header(number: int, name: str, call_id: str) -> str:
    label = ", ".join(part for part in (_label(name), _label(call_id) and f"call {_label(call_id)}") if part)
    return f"[TOOL RESULT {number}: {label}]" if label else f"[TOOL RESULT {number}]"


def _label(text: str) -> str:
    """A name or id fit for a one-line header: no brackets, no line breaks."""
    return " ".join(defuse(text).replace("[", "(").replace("]", ")").split())


def _call_json(name: str, arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def _arguments_value(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments
