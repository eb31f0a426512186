from debate_lightning.debate.quotes import QuoteChecker, mark_quotes, quote_stats

STORY = "The old mill stood by the river.\nMartha said, \u201cWe leave at dawn,\u201d and smiled at Tom."


def test_exact_normalised_fuzzy_and_invalid():
    c = QuoteChecker(STORY)
    assert c.check("The old mill stood").match == "exact"
    assert c.check('martha said "we leave at dawn"').match == "normalized"
    assert c.check("We leave at dawnn and smiled at Tom").match == "fuzzy"
    bad = c.check("The dragon burned the village")
    assert not bad.valid and bad.match == "none"
    # Short quotes never pass on fuzziness alone.
    assert not c.check("the mil").valid


def test_speech_quotes_marked_for_judge_and_counted():
    c = QuoteChecker(STORY)
    speech = "See <quote>The old mill stood by the river.</quote> but not <quote>Tom left at noon yesterday</quote>."
    quotes = c.check_speech(speech)
    assert [q.valid for q in quotes] == [True, False]
    marked = mark_quotes(speech, quotes)
    assert "<quote>The old mill" in marked and "<invalid_quote>Tom left" in marked
    stats = quote_stats(quotes)
    assert stats == {"num_quotes": 2, "num_valid": 1, "valid_words": 7, "invalid_words": 5}
