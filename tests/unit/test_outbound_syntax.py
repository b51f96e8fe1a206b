"""What the router proposes to a destination, and which accepted syntax it sends in."""

from __future__ import annotations

from router.outbound_syntax import EXPLICIT_LITTLE, IMPLICIT_LITTLE, plan_syntaxes

JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
CT = "1.2.840.10008.5.1.4.1.1.2"


def everything(_syntax: str) -> bool:
    return True


def test_stored_syntax_first_then_the_destination_list_in_its_order() -> None:
    plan = plan_syntaxes(RLE, None, [JPEG_LS, EXPLICIT_LITTLE], False, everything)
    assert plan.proposals == (RLE, JPEG_LS, EXPLICIT_LITTLE)
    assert plan.choose({EXPLICIT_LITTLE, RLE}) == [RLE, EXPLICIT_LITTLE]
    assert plan.choose({EXPLICIT_LITTLE, JPEG_LS}) == [JPEG_LS, EXPLICIT_LITTLE]


def test_rule_target_replaces_the_stored_syntax() -> None:
    plan = plan_syntaxes(EXPLICIT_LITTLE, JPEG_LS, [JPEG_LS], False, everything)
    assert plan.proposals == (JPEG_LS,)
    plan = plan_syntaxes(
        EXPLICIT_LITTLE, J2K_LOSSLESS, [JPEG_LS, IMPLICIT_LITTLE], False, everything
    )
    assert plan.proposals == (J2K_LOSSLESS, JPEG_LS, IMPLICIT_LITTLE)


def test_without_a_list_the_universal_syntaxes_are_offered() -> None:
    plan = plan_syntaxes(JPEG_LS, None, [], False, everything)
    assert plan.proposals == (JPEG_LS, EXPLICIT_LITTLE, IMPLICIT_LITTLE)
    plan = plan_syntaxes(EXPLICIT_LITTLE, None, [], False, everything)
    assert plan.proposals == (EXPLICIT_LITTLE, IMPLICIT_LITTLE)


def test_lossy_syntaxes_only_when_a_rule_asked_for_lossy() -> None:
    strict = plan_syntaxes(EXPLICIT_LITTLE, None, [JPEG_BASELINE, J2K_LOSSY], False, everything)
    assert strict.proposals == (EXPLICIT_LITTLE,)
    assert strict.choose({JPEG_BASELINE, J2K_LOSSY}) == []
    reason = strict.refusal(CT)
    assert CT in reason and "explicit-little" in reason
    assert "jpeg-baseline is lossy and no rule asked for lossy compression" in reason
    assert "jpeg2000 is lossy" in reason
    lossy = plan_syntaxes(EXPLICIT_LITTLE, None, [JPEG_BASELINE, J2K_LOSSY], True, everything)
    assert lossy.proposals == (EXPLICIT_LITTLE, JPEG_BASELINE, J2K_LOSSY)


def test_an_instance_already_lossy_is_offered_as_stored() -> None:
    plan = plan_syntaxes(JPEG_BASELINE, None, [JPEG_BASELINE], False, everything)
    assert plan.proposals == (JPEG_BASELINE,)
    assert plan.choose({JPEG_BASELINE}) == [JPEG_BASELINE]


def test_syntaxes_without_an_encoder_are_left_out_with_the_reason() -> None:
    plan = plan_syntaxes(EXPLICIT_LITTLE, None, [JPEG_LS, RLE], False, lambda s: s != JPEG_LS)
    assert plan.proposals == (EXPLICIT_LITTLE, RLE)
    assert "no encoder is installed for jpeg-ls-lossless" in plan.refusal(CT)
