"""Caption clean-up on real-looking VLM answers: boilerplate openings, whitespace, capitals,
length caps at sentence boundaries, trigger word."""

import pytest

from pipeline.caption.cleanup import CleanupConfig, cap_length, clean_caption

CASES = [
    ("The video shows a man riding a mountain bike down a rocky trail. The camera follows him.",
     "A man riding a mountain bike down a rocky trail. The camera follows him."),
    ("This clip depicts two cyclists racing on a dirt road at sunset.",
     "Two cyclists racing on a dirt road at sunset."),
    ("In this video, a woman in a red coat walks across a busy street.",
     "A woman in a red coat walks across a busy street."),
    ("In the video we see a dog catching a frisbee in a park.", "A dog catching a frisbee in a park."),
    ("The image shows a young woman with long black hair and a denim jacket, smiling.",
     "A young woman with long black hair and a denim jacket, smiling."),
    ("This photo features an astronaut in a white spacesuit holding a helmet.",
     "An astronaut in a white spacesuit holding a helmet."),
    ("The footage captures a static shot of a kitchen counter.", "A static shot of a kitchen counter."),
    ("Sure! Here is a description of the video: The video shows a car driving at night.",
     "A car driving at night."),
    ("Caption: a rabbit hops across a meadow.", "A rabbit hops across a meadow."),
    ("  a  man\n\ttalks on a phone   inside a car.  ", "A man talks on a phone inside a car."),
    ('"The camera pans left over a harbour."', "The camera pans left over a harbour."),
    ("A man rides a bicycle. The video shows nothing else.", "A man rides a bicycle. The video shows nothing else."),
    ("The video", "The video"),  # not an opening followed by a description: left alone
    ("The video shows", ""),
    ("", ""),
    ("\ufffd\ufffd \x7f", ""),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_clean_caption(raw, expected):
    assert clean_caption(raw, CleanupConfig(max_words=0)) == expected


def test_trigger_word_goes_in_front_once():
    cfg = CleanupConfig(trigger="sks")
    assert clean_caption("The video shows a cat sleeping.", cfg) == "sks, A cat sleeping."
    assert clean_caption("sks walks in a garden.", cfg) == "sks walks in a garden."
    assert clean_caption("The video shows", cfg) == ""  # an empty caption stays empty (caption_failed)


def test_length_caps_cut_at_sentence_boundaries():
    text = "A man rides a bike along a river. He stops near a bridge. The camera is handheld and shaky."
    assert cap_length(text, max_words=14) == "A man rides a bike along a river. He stops near a bridge."
    assert cap_length(text, max_words=8) == "A man rides a bike along a river."
    assert cap_length(text, max_words=7) == "A man rides a bike along a."  # first sentence too long: cut at a word
    assert cap_length(text, max_words=4) == "A man rides a."  # one sentence too long: cut at a word
    assert cap_length(text, max_chars=40) == "A man rides a bike along a river."
    assert len(cap_length(text, max_chars=20)) <= 20
    assert cap_length(text) == text
    assert clean_caption(text, CleanupConfig(max_words=14, trigger="ohwx")) == (
        "ohwx, A man rides a bike along a river. He stops near a bridge.")
