"""Which transfer syntaxes to propose to a destination, and which one to send in.

Pure policy, no I/O. The rules are (docs/transfer-syntaxes.md):

- The instance is offered first in the syntax it would have without any change of
  encoding: the one its rule's ``transcode`` names, or else the one it was received
  in. A destination that accepts that gets exactly that.
- Then come the syntaxes the destination lists in ``transfer_syntaxes`` (its order),
  keeping only those the router can produce: an encoder is installed, and a lossy
  syntax only when the rule itself asked for lossy compression. A destination with no
  list is offered explicit and implicit VR little endian, which every storage SCP
  must accept (PS3.4 B.4.1 for the implicit one).
- The first proposal the destination accepts wins. When it accepts none, the
  delivery fails permanently with a reason naming what was offered and why other
  syntaxes were not, so it lands in the dead-letter store, never sent in a syntax
  the destination did not accept.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from router.transcode import can_encode, is_lossy, syntax_name

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
UNIVERSAL = (EXPLICIT_LITTLE, IMPLICIT_LITTLE)
NO_LOSSY_RULE = "no rule asked for lossy compression"


@dataclass(frozen=True)
class SyntaxPlan:
    """What to propose for one instance to one destination, best first."""

    proposals: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    """Why some of the destination's syntaxes were not proposed (one sentence each)."""

    def choose(self, accepted: Collection[str]) -> list[str]:
        """The proposals the destination accepted, in the order to try them."""
        return [syntax for syntax in self.proposals if syntax in accepted]

    def refusal(self, sop_class: str) -> str:
        """The reason to record when the destination accepted none of the proposals."""
        offered = ", ".join(syntax_name(s) for s in self.proposals)
        reason = "destination accepts none of the transfer syntaxes offered for SOP class "
        reason += f"{sop_class} ({offered})"
        if self.left_out:
            reason += "; not offered: " + "; ".join(self.left_out)
        return reason


def plan_syntaxes(
    stored: str,
    rule_target: str | None,
    destination_accepts: Sequence[str],
    allow_lossy: bool,
    encodable: Callable[[str], bool] = can_encode,
) -> SyntaxPlan:
    """The proposals for an instance stored in ``stored`` (see the module docstring)."""
    first = rule_target or stored
    proposals = [first]
    left_out: list[str] = []
    for syntax in destination_accepts or UNIVERSAL:
        if syntax in proposals:
            continue
        if is_lossy(syntax) and not allow_lossy:
            left_out.append(f"{syntax_name(syntax)} is lossy and {NO_LOSSY_RULE}")
        elif not encodable(syntax):
            left_out.append(f"no encoder is installed for {syntax_name(syntax)}")
        else:
            proposals.append(syntax)
    return SyntaxPlan(tuple(proposals), tuple(left_out))
