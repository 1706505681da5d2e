"""Field checks shared by every record format, so that a bad record reads the same in every stage.

Every message has the shape ``"<file>:<line or row N>: <what is wrong with which field>"``::

    data.jsonl:3: missing field 'output'
    data.json:row 5: field 'output' must be a string, got int
    data.json:row 5: field 'messages[1].role' must be one of 'user', 'assistant', 'system' (...), got 'bot'
    data.csv:row 2: unknown record format (fields: 'text'); accepted field sets: ...

The conversation checks live here too: chat ``messages`` / ShareGPT ``conversations`` and hh-rlhf
dialogues (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) all become role/content message lists.
"""

import re
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

from minichatgpt.data.readers import DataError, Record, type_name
from minichatgpt.tokenizer import Message, normalize_messages

Kind = Union[Type, Tuple[Type, ...]]

EXPECTED = {str: "a string", list: "a list", dict: "an object", (str, dict): "a string or an object"}
# Role names accepted in the data; normalize_messages maps ShareGPT's human/gpt to user/assistant.
ROLES = ("user", "assistant", "system", "human", "gpt")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


# ---------------------------------------------------------------------------------------------
# the wording: one way to say each kind of problem
# ---------------------------------------------------------------------------------------------
def missing_field(where: str, *fields: str) -> DataError:
    """``where: missing field 'a'`` (or ``'a' or 'b'`` when any one of several fields would do)."""
    return DataError(f"{where}: missing field " + " or ".join(f"'{f}'" for f in fields))


def wrong_type(where: str, field: str, kind: Kind, value: Any) -> DataError:
    return DataError(f"{where}: field '{field}' must be {EXPECTED[kind]}, got {type_name(value)}")


def invalid_field(where: str, field: str, problem: str) -> DataError:
    """``where: field 'f' <problem>``, for a value of the right type that still cannot be used."""
    return DataError(f"{where}: field '{field}' {problem}")


# ---------------------------------------------------------------------------------------------
# reading fields
# ---------------------------------------------------------------------------------------------
def check_value(value: Any, field: str, where: str, kind: Kind = str) -> Any:
    """Return ``value`` if it is of ``kind`` (strings must also be encodable text), else raise DataError."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise wrong_type(where, field, kind, value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates from "\ud800" escapes; tokenizers reject them
            raise invalid_field(where, field, f"is not valid Unicode text ({err.reason} at {err.start})") from err
    return value


def require(record: Record, field: str, where: str, kind: Kind = str) -> Any:
    """The value of a required field, type-checked. A null value counts as present and of the wrong type."""
    if field not in record:
        raise missing_field(where, field)
    return check_value(record[field], field, where, kind)


def optional(record: Record, field: str, where: str, kind: Kind = str, default: Any = None) -> Any:
    """The value of an optional field, type-checked; ``default`` when absent or null."""
    value = record.get(field)
    if value is None:
        return default
    return check_value(value, field, where, kind)


def require_any(record: Record, fields: Sequence[str], where: str, kind: Kind = str) -> Tuple[str, Any]:
    """The first present one of several synonymous fields (e.g. ``completion`` / ``response``)."""
    for field in fields:
        if record.get(field) is not None:
            return field, check_value(record[field], field, where, kind)
    raise missing_field(where, *fields)


# ---------------------------------------------------------------------------------------------
# record formats
# ---------------------------------------------------------------------------------------------
class Format(NamedTuple):
    """One accepted record layout of a dataset."""

    name: str
    keys: Tuple[str, ...]  # the record is of this format when all of these fields are present
    fields: str  # the whole field set, as the unknown-format error lists it


def detect_format(record: Record, formats: Sequence[Format], where: str) -> Format:
    """The first format whose key fields are all present (non-null) in ``record``.

    Detection looks at key fields only, so a record of a known format with a field missing gets the
    precise "missing field" error from its parser instead of "unknown format".
    """
    for fmt in formats:
        if all(record.get(key) is not None for key in fmt.keys):
            return fmt
    present = ", ".join(f"'{key}'" for key in sorted(map(str, record))) or "none"
    accepted = "; ".join(f"{{{fmt.fields}}}" for fmt in formats)
    raise DataError(f"{where}: unknown record format (fields: {present}); accepted field sets: {accepted}")


def user_text(instruction: str, extra: Optional[str]) -> str:
    """Alpaca's user message: the instruction, plus a blank line and the input when there is one."""
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


def check_instances(record: Record, where: str, with_output: bool) -> List[Tuple[str, Optional[str]]]:
    """Self-instruct ``instances: [{"input", "output"}, ...]`` as ``(input, output)`` pairs.

    ``output`` is required with ``with_output`` (demonstrations) and ``None`` otherwise (prompts).
    """
    instances = require(record, "instances", where, list)
    if not instances:
        raise invalid_field(where, "instances", "is empty")
    pairs = []
    for i, instance in enumerate(instances):
        name = f"instances[{i}]"
        check_value(instance, name, where, dict)
        extra = instance.get("input")
        extra = "" if extra is None else check_value(extra, f"{name}.input", where)
        output = None
        if with_output:
            if "output" not in instance:
                raise missing_field(where, f"{name}.output")
            output = check_value(instance["output"], f"{name}.output", where)
        pairs.append((extra, output))
    return pairs


# ---------------------------------------------------------------------------------------------
# conversations
# ---------------------------------------------------------------------------------------------
def check_messages(value: Any, field: str, where: str) -> List[Message]:
    """Validate a chat (``role``/``content``) or ShareGPT (``from``/``value``) turn list; normalize it.

    Returns:
        ``[{"role": "user" | "assistant" | "system", "content": str}, ...]`` with stripped contents.
    """
    check_value(value, field, where, list)
    if not value:
        raise invalid_field(where, field, "is empty")
    return [check_turn(turn, f"{field}[{i}]", where) for i, turn in enumerate(value)]


def check_turn(turn: Any, field: str, where: str) -> Message:
    """Validate one ``{"role", "content"}`` or ``{"from", "value"}`` turn; return it as role/content."""
    check_value(turn, field, where, dict)
    role_key, content_key = ("role", "content") if "role" in turn else ("from", "value")
    if role_key not in turn:
        raise missing_field(where, f"{field}.role", f"{field}.from")
    role = check_value(turn[role_key], f"{field}.{role_key}", where)
    if role not in ROLES:
        raise invalid_field(where, f"{field}.{role_key}", "must be one of 'user', 'assistant', 'system' "
                            f"(or ShareGPT's 'human', 'gpt'), got {role!r}")
    if content_key not in turn:
        raise missing_field(where, f"{field}.{content_key}")
    content = check_value(turn[content_key], f"{field}.{content_key}", where)
    (message,) = normalize_messages([{"role": role, "content": content.strip()}])
    return message


def check_reply(value: Any, field: str, where: str) -> str:
    """An assistant reply given as a string or as one turn object (``{"from": "gpt", "value": ...}``)."""
    check_value(value, field, where, (str, dict))
    if isinstance(value, str):
        return value.strip()
    turn = check_turn(value, field, where)
    if turn["role"] != "assistant":
        role_key = "role" if "role" in value else "from"
        raise invalid_field(where, f"{field}.{role_key}", f"must be an assistant turn, got {value[role_key]!r}")
    return turn["content"]


def split_dialogue(text: str, field: str, where: str) -> Tuple[List[Message], str]:
    """Split an hh-rlhf dialogue at its last Assistant turn into prompt messages and the final reply.

    ``"\\n\\nHuman: q1\\n\\nAssistant: a1\\n\\nHuman: q2\\n\\nAssistant: a2"`` becomes
    ``([user q1, assistant a1, user q2], "a2")``, so the tokenizer's own chat template can render it.
    """
    if text.startswith(("Human:", "Assistant:")):  # some exports drop the leading blank line
        text = "\n\n" + text
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise invalid_field(where, field, "is not an hh-rlhf dialogue (no '\\n\\nAssistant:' turn)")
    head, reply = text[:cut], text[cut + len(ASSISTANT):]
    parts = HH_TURN.split(head)  # ["", "Human", " q1", "Assistant", " a1", ...]
    if parts[0].strip() or len(parts) < 3:
        raise invalid_field(where, field, "is not an hh-rlhf dialogue (it must start with '\\n\\nHuman:')")
    messages = [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
                for speaker, content in zip(parts[1::2], parts[2::2])]
    if not any(m["role"] == "user" for m in messages):
        raise invalid_field(where, field, "has no Human turn before its last Assistant turn")
    return messages, reply.strip()


def prompt_messages(prompt: str, where: str) -> List[Message]:
    """The messages of a ``prompt`` field: one user turn, or the turns of an already formatted hh prompt.

    Some preference sets (e.g. the ones coati trained on) store prompts already rendered as
    ``"\\n\\nHuman: ...\\n\\nAssistant:"``; those are parsed back into turns so that they are not
    wrapped in a second Human/Assistant frame.
    """
    framed = "\n\n" + prompt.strip()
    if framed.startswith(HUMAN) and framed.endswith(ASSISTANT):
        return split_dialogue(framed, "prompt", where)[0]
    return [{"role": "user", "content": prompt.strip()}]
