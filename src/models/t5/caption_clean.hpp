// Caption cleaning of Open-Sora v1.0 (opensora/models/text_encoder/t5.py: text_preprocessing = clean_caption applied
// twice) and PixArt (diffusers: PixArtAlphaPipeline._clean_caption): URLs, HTML, @names, CJK, ids, file names,
// shop boilerplate and odd punctuation removed, dashes and quotes unified, lower case, single spaces.
//
// Known differences from the Python original (UTF-8 in and out; Python's re/str Unicode semantics for \w \d \s \b,
// lower() and strip() are followed, from tables generated out of Python's unicodedata by
// tools/gen_t5_unicode_tables.py):
//  - ftfy.fix_text is partly reproduced: HTML entity unescaping (lower-case names), C1 controls read as windows-1252,
//    Latin ligatures, full-width characters, curly quotes, line breaks, terminal escapes, control characters. Not
//    done: mojibake repair (fix_encoding: "cafÃ©" stays), NFC normalization (a decomposed "e" + U+0301 stays two
//    characters), upper-case entity names (never present: the caption is lower-cased first).
//  - BeautifulSoup(..., "html.parser").text is approximated: tags, end tags, comments, <!...> and <?...> removed,
//    <script>/<style>/<template> contents dropped, entities and character references decoded as bs4 does; text
//    that html.parser would read in its odd corner cases (unclosed comments or tags, malformed markup) may differ.
//  - urllib unquote_plus: '+' -> ' ', %XX runs decoded as UTF-8 with U+FFFD for bad bytes (as Python). Invalid UTF-8
//    in the input becomes U+FFFD.
//  - str.lower(): the final-sigma rule uses an approximation of "cased" and "case-ignorable" letters.
// The diffusers copy differs from Open-Sora in one place, which this file follows: Open-Sora strips the text after
// ftfy + html.unescape (basic_clean); diffusers does not.
#pragma once
#include <string>

namespace opendit::models::t5 {

// One caption as Open-Sora v1.0 feeds T5: clean_caption(clean_caption(caption)).
std::string clean_caption(const std::string& caption);

// A single pass of clean_caption.
std::string clean_caption_once(const std::string& caption);

}  // namespace opendit::models::t5
