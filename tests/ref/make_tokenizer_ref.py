"""Reference T5 tokenization and Open-Sora caption cleaning, for tests/models/test_tokenizer.cpp.

Writes into OUTDIR:
- spiece.model: a tiny SentencePiece unigram model trained here with T5's settings (pad 0, eos 1, unk 2, no bos,
  nmt_nfkc), so nothing is downloaded.
- tokens.json: [{caption, max_length, sp_ids, tied_ids, hf_ids, hf_mask}]: sp_ids is sentencepiece's encode plus EOS (no
  truncation); hf_ids/hf_mask come from transformers' T5Tokenizer.from_pretrained(OUTDIR, legacy=True) with padding="max_length",
  truncation=True, add_special_tokens=True. sp_ids is null where the caption holds a special-token string
  (<extra_id_N>, </s>, ...), which sentencepiece alone reads as plain characters. tied_ids: other segmentations
  (plus EOS) with exactly sp_ids' score ("..." as "." ".." or ".." "."), which another sentencepiece may pick.
- clean.json: [{input, expected, known_difference?}]: Open-Sora v1.0's text_preprocessing (clean_caption twice).
  Its clean_caption is diffusers' PixArtAlphaPipeline._clean_caption except that Open-Sora strips the text after the
  ftfy + double html.unescape step (basic_clean); the shim below adds that strip. `diffusers` holds plain diffusers'
  result where that one differs. known_difference names why the C++ port (no ftfy/bs4) is expected to differ.
Needs: sentencepiece, protobuf (transformers reads spiece.model with it), transformers (with tokenizers), diffusers, beautifulsoup4, ftfy.
"""
import html
import json
import os
import random
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

WORDS = ("a the of and in on with at by for from to under over near cat dog bird horse car tree river mountain city "
         "street sunset beach forest house people man woman child playing running walking sitting standing red blue "
         "green yellow black white small large old young beautiful dark bright snowy rainy video scene camera shot "
         "close-up slow motion aerial view timelapse 4k hd realistic cinematic painting drawing style light shadow "
         "water sky cloud flower garden road bridge boat ship train airplane field grass stone wall window door").split()
UNICODE = ["café", "naïve", "résumé", "Zürich", "São Paulo", "façade", "jalapeño", "Ærø", "東京", "北京", "日本",
           "小猫", "😀", "🐱", "🚀", "—", "“quoted”", "‘single’", "…", "½", "°C", "ß", "Ωmega"]


def corpus(rng):
    # Pseudo-words from syllables give the trainer enough distinct pieces for the vocabulary size.
    syll = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    pseudo = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 18)
        words = [rng.choice(WORDS if rng.random() < 0.6 else pseudo) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), rng.choice(UNICODE))
        if rng.random() < 0.2:
            words.append(str(rng.randint(0, 2024)))
        s = " ".join(words)
        lines.append(s[0].upper() + s[1:] + rng.choice([".", ",", "!", "?", ""]))
    return lines


def train(outdir):
    import sentencepiece as spm
    rng = random.Random(1234)
    text = os.path.join(outdir, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus(rng)) + "\n")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=os.path.join(outdir, "spiece"), vocab_size=800, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", character_coverage=0.9995,
        num_threads=1, seed_sentencepiece_size=20000, minloglevel=2)
    os.remove(text)
    os.remove(os.path.join(outdir, "spiece.vocab"))


CAPTIONS = [
    "A cat sitting on a red car.", "", " ", "   \t\n  ", "a  dog   running\tin the\nforest ",
    "  leading and trailing spaces  ", "Numbers 123 4567 3.14 1,000,000 and 2024-01-01", "Punctuation!?.,;:()[]{}'\"",
    "café naïve résumé Zürich façade", "東京 北京 小猫 日本の猫", "emoji 😀🐱🚀 here", "unknown chars: Ѯ ᚠ ⵣ ꙮ 𝔸",
    "fullwidth ＡＢＣ１２３ and ligature ﬁsh ①②", "no\u00a0break\u3000ideographic\u2003em space", "zero\u200bwidth",
    "tab\tnew\r\nline", "UPPER lower MiXeD", "a sentinel <extra_id_0> inside and <extra_id_99>end",
    "<extra_id_3><extra_id_10>", "literal </s> eos and <pad> pad and <unk> unk", "<extra_id_100> is not special",
    "x" * 50, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "quotes “double” ‘single’ — dash … ellipsis", "▁underscore▁piece", "a\u0301 combining e\u0301",
]


def long_caption(rng):
    return " ".join(rng.choice(WORDS) for _ in range(200)) + " the end"


def tokens(outdir):
    import sentencepiece as spm
    from transformers import T5Tokenizer
    model = os.path.join(outdir, "spiece.model")
    sp = spm.SentencePieceProcessor(model_file=model)
    # from_pretrained converts spiece.model as for a hub folder (DeepFloyd/t5-v1_1-xxl); T5Tokenizer(vocab_file=...)
    # alone would not read it in transformers 5. legacy=True is what Open-Sora v1.0 gets (transformers 4 defaults to
    # it; transformers 5 has only that behaviour: a "▁" before the text after every special token).
    hf = T5Tokenizer.from_pretrained(outdir, legacy=True)
    rng = random.Random(7)
    caps = CAPTIONS + [long_caption(rng), long_caption(rng)[:400]]
    specials = ["<extra_id_", "</s>", "<pad>", "<unk>"]
    cases = []
    for max_length in (120, 8, 1, 2):
        for cap in caps:
            enc = hf(cap, padding="max_length", truncation=True, max_length=max_length, add_special_tokens=True)
            plain = not any(s in cap for s in specials)
            # Segmentations tied with the best (same total score): sentencepiece versions break such ties differently.
            best = sp.nbest_encode_as_ids(cap, nbest_size=4) if plain else []
            score = [sum(sp.get_score(i) for i in ids) for ids in best]
            ties = [ids + [1] for ids, sc in zip(best[1:], score[1:]) if abs(sc - score[0]) < 1e-6]
            cases.append({"caption": cap, "max_length": max_length, "tied_ids": ties,
                          "sp_ids": sp.encode(cap) + [1] if plain else None,
                          "hf_ids": list(enc["input_ids"]), "hf_mask": list(enc["attention_mask"])})
    with open(os.path.join(outdir, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab_size": hf.vocab_size, "sp_pieces": sp.get_piece_size(), "cases": cases}, f,
                  ensure_ascii=False, indent=0)


CLEAN = [
    # (input, known_difference or None)
    ("A Cute CAT", None), ("  spaces   everywhere\t\nand\n\nlines  ", None),
    ("visit https://example.com/path?a=1 now", None), ("see www.example.org/page and http:foo", None),
    ("shop at store.co.uk today", None), ("mail me at someone@example.com", None),
    ("<b>bold</b> and <a href=\"x\">link</a> text", None), ("a <br/> b <p>para</p>", None),
    ("x<script>var a=1</script>y<!-- comment -->z", None), ("fish &amp; chips &lt;3 &quot;yum&quot; &gt;", None),
    ("&amp;lt;b&amp;gt; double escaped", None), ("&#65;&#x42; numeric &#8212; refs &copy 2020", None),
    ("caf%C3%A9+au+lait 100%25 %zz", None), ("photo by @john_doe and @jane", None),
    ("<person> walking a dog", None), ("中文标题 with CJK 東京タワー ㇰ ㈱ ㌔ ䷀", None),
    ("dash–en — em ‐ hyphen ― bar ～ ﹣ －", None), ("«guillemets» “curly” ‘single’ `back´ ¨", None),
    ("server 192.168.0.1 down", None), ("article 3:45   ", None), ("line\\nbreak literal", None),
    ("tag #123 and #12345678 and #1234 and 1234567 id", None), ("file photo_001.jpg and scan.pdf here", None),
    ("wow!!! ... '''quoted''' \"\"double\"\"", None), ("***sale*** #hashtag [tag] {x} (y) |z| a/b \\c ~d", None),
    ("this-is-my-cute-cat", None), ("snake_case_name_here x", None), ("a - b", None),
    ("model jc6640 and jc6640vc and 6640vc231 and j2d1a2a", None), ("free shipping worldwide free shipping", None),
    ("free download free now download", None), ("click for more and click on here", None),
    ("png image and jpg images here", None), ("see page 12 of it", None), ("size 1920x1080 and 2.5×3 and 3х4", None),
    ("time : now", None), ("a,b.c/d e", None), ("\"quoted caption\"", None), ("'single quoted'", None),
    ("- leading dash", None), ("trailing plus+", None), (".hidden", None), ("ÀÉÎÕÜ ΣΊΣΥΦΟΣ İstanbul", None),
    ("ﬁne ligature ＦＵＬＬ width", None), ("smart „low“ quotes ‚x‛", None), ("tab\there\x07bell", None),
    ("café résumé naïve", None), ("emoji 😀 test 🐱", None), ("", None), ("   ", None),
    ("http://a.com https://b.com www.c.org", None), ("a ; b ; c", None), ("® © ™ • · º ½ ¾ ¿ ¡ §", None),
    ("Ñandú ÇA ÿ", None), ("x , y . z", None), ("end with colon:", None), ("the 3 . 5 thing", None),
    ("text with &nbsp; space", None), ("multiple    spaces\n\nand\ttabs", None),
    ("mojibake cafÃ© na\u00c3\u00afve", "ftfy repairs mojibake (fix_encoding); the C++ port does not"),
    ("e\u0301 decomposed accent", "ftfy's NFC composes e + U+0301; the C++ port does not normalize"),
]


def patched_clean():
    """diffusers' _clean_caption with Open-Sora's extra strip after the double html.unescape."""
    import diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha as pa
    fn = pa.PixArtAlphaPipeline._clean_caption
    owner = types.SimpleNamespace(bad_punct_regex=pa.PixArtAlphaPipeline.bad_punct_regex)
    calls = {"n": 0}

    def unescape(s):
        # Called twice, nested: the outer (second) call is the end of Open-Sora's basic_clean, which strips.
        calls["n"] += 1
        out = html.unescape(s)
        return out.strip() if calls["n"] % 2 == 0 else out

    def opensora(text):
        pa.html = types.SimpleNamespace(unescape=unescape)
        try:
            return fn(owner, fn(owner, text))
        finally:
            pa.html = html

    def plain(text):
        return fn(owner, fn(owner, text))
    return opensora, plain


def clean(outdir):
    opensora, plain = patched_clean()
    cases = []
    for text, known in CLEAN:
        case = {"input": text, "expected": opensora(text)}
        if plain(text) != case["expected"]:
            case["diffusers"] = plain(text)
        if known:
            case["known_difference"] = known
        cases.append(case)
    with open(os.path.join(outdir, "clean.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    train(outdir)
    tokens(outdir)
    clean(outdir)
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
