// Open-Sora v1.0 / PixArt caption cleaning (see caption_clean.hpp for what differs from Python). Text is processed as
// UTF-32 (wchar_t is 32 bits on Linux); the regular expressions run on std::wregex with a traits class whose \w \d \s
// (and so \b) follow Python's Unicode rules.
#include "models/t5/caption_clean.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <regex>
#include <string>

namespace opendit::models::t5 {

namespace {
static_assert(sizeof(wchar_t) == 4, "caption cleaning needs a 32-bit wchar_t");
using WStr = std::wstring;

struct CpRange {
  char32_t lo, hi;
};
struct LowerRun {
  char32_t lo, hi;
  int32_t delta, step;
};
struct Entity {
  const char* name;
  const char* utf8;
};  // html5 name (with or without ';') -> value
struct CpMap {
  char32_t cp;
  const char* utf8;
};
#include "models/t5/unicode_tables.inc"

template <size_t N>
bool in(const CpRange (&r)[N], char32_t c) {
  auto it = std::upper_bound(r, r + N, c, [](char32_t v, const CpRange& x) { return v < x.lo; });
  return it != r && c <= (it - 1)->hi;
}
bool is_word(char32_t c) { return in(kWordRanges, c); }
bool is_digit(char32_t c) { return in(kDigitRanges, c); }
bool is_space(char32_t c) { return in(kSpaceRanges, c); }

// ---- UTF-8 <-> UTF-32, with Python's errors="replace" (one U+FFFD per maximal invalid subsequence) ----
WStr decode_utf8(const std::string& s) {
  WStr out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned b = p[i];
    if (b < 0x80) {
      out += wchar_t(b);
      ++i;
      continue;
    }
    size_t need = b >= 0xC2 && b <= 0xDF ? 1 : b >= 0xE0 && b <= 0xEF ? 2 : b >= 0xF0 && b <= 0xF4 ? 3 : 0;
    if (need == 0) {
      out += L'\uFFFD';
      ++i;
      continue;
    }
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte (no overlongs or surrogates)
    if (b == 0xE0)
      lo = 0xA0;
    else if (b == 0xED)
      hi = 0x9F;
    else if (b == 0xF0)
      lo = 0x90;
    else if (b == 0xF4)
      hi = 0x8F;
    char32_t cp = b & (need == 1 ? 0x1F : need == 2 ? 0x0F : 0x07);
    size_t k = 1;
    for (; k <= need && i + k < n; ++k) {
      const unsigned c = p[i + k];
      if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) break;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (k <= need) {
      out += L'\uFFFD';
      i += k;
      continue;
    }  // bytes so far are one invalid subsequence
    out += wchar_t(cp);
    i += need + 1;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
    return;
  }
  if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
    return;
  }
  if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
  }
  out += char(0x80 | ((c >> 6) & 0x3F));
  out += char(0x80 | (c & 0x3F));
}
std::string encode_utf8(const WStr& s) {
  std::string out;
  for (wchar_t c : s) append_utf8(out, char32_t(c) >= 0xD800 && char32_t(c) <= 0xDFFF ? 0xFFFD : char32_t(c));
  return out;
}

// ---- std::wregex with Python's Unicode classes ----
struct PyTraits : std::regex_traits<wchar_t> {
  using char_class_type = unsigned;
  static constexpr unsigned kW = 1, kD = 2, kS = 4;
  template <class It>
  char_class_type lookup_classname(It first, It last, bool = false) const {
    std::string name;  // "W" for \\W (libstdc++ passes the escape letter; the negation is separate)
    for (; first != last; ++first) name += char(std::tolower(char(*first)));
    return name == "w" ? kW : name == "d" ? kD : name == "s" ? kS : 0;
  }
  bool isctype(wchar_t c, char_class_type m) const {
    return ((m & kW) && is_word(c)) || ((m & kD) && is_digit(c)) || ((m & kS) && is_space(c));
  }
};
using Regex = std::basic_regex<wchar_t, PyTraits>;
WStr sub(const WStr& s, const Regex& re, const wchar_t* fmt = L"") { return std::regex_replace(s, re, fmt); }

WStr strip(const WStr& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

WStr replace_all(WStr s, const WStr& from, const WStr& to) {
  for (size_t p = s.find(from); p != WStr::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// ---- str.lower() ----
char32_t lower1(char32_t c) {
  auto it = std::upper_bound(std::begin(kLowerRuns), std::end(kLowerRuns), c,
                             [](char32_t v, const LowerRun& r) { return v < r.lo; });
  if (it == std::begin(kLowerRuns)) return c;
  const LowerRun& r = *(it - 1);
  return c <= r.hi && (c - r.lo) % r.step == 0 ? char32_t(int64_t(c) + r.delta) : c;
}
bool cased_letter(char32_t c) { return is_word(c) && !is_digit(c) && c != '_' && !(c >= '0' && c <= '9'); }
bool case_ignorable(char32_t c) {
  return c == '\'' || c == '.' || c == ':' || c == 0x2019 || c == 0xB7 || (c >= 0x300 && c <= 0x36F);
}
WStr lower(const WStr& s) {
  WStr out;
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == 0x130) {
      out += L"i\u0307";
      continue;
    }
    if (c == 0x3A3) {  // final sigma: after a cased letter, not before one
      size_t a = i, b = i + 1;
      while (a > 0 && case_ignorable(s[a - 1])) --a;
      while (b < s.size() && case_ignorable(s[b])) ++b;
      const bool fin = a > 0 && cased_letter(s[a - 1]) && !(b < s.size() && cased_letter(s[b]));
      out += wchar_t(fin ? 0x3C2 : 0x3C3);
      continue;
    }
    out += wchar_t(lower1(c));
  }
  return out;
}

// ---- urllib.parse.unquote_plus ----
int hexval(wchar_t c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}
WStr unquote_plus(const WStr& s) {
  WStr out;
  for (size_t i = 0; i < s.size();) {
    std::string bytes;  // a run of %XX escapes, decoded together
    while (i + 2 < s.size() && s[i] == '%' && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      bytes += char(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 3;
    }
    if (!bytes.empty()) {
      out += decode_utf8(bytes);
      continue;
    }
    out += s[i] == '+' ? L' ' : s[i];
    ++i;
  }
  return out;
}

// ---- HTML entities ----
const char* entity(const WStr& name) {  // name as in the html5 table ("amp;" or "amp"); null if unknown
  std::string n;
  for (wchar_t c : name) {
    if (c > 0x7F) return nullptr;
    n += char(c);
  }
  auto it = std::lower_bound(std::begin(kEntities), std::end(kEntities), n,
                             [](const Entity& e, const std::string& v) { return std::string(e.name) < v; });
  return it != std::end(kEntities) && n == it->name ? it->utf8 : nullptr;
}
// windows-1252 for 0x80..0x9F (0 where undefined).
const char32_t kCp1252[32] = {0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
                              0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
                              0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};
char32_t cp1252(char32_t c) { return c >= 0x80 && c <= 0x9F && kCp1252[c - 0x80] ? kCp1252[c - 0x80] : c; }

// Reads "#123" / "#x1F" at s[i] (after '&'); returns the number (capped) and sets *end; -1 if not a reference.
int64_t charref(const WStr& s, size_t i, size_t* end) {
  if (i >= s.size() || s[i] != '#') return -1;
  const bool hex = i + 1 < s.size() && (s[i + 1] == 'x' || s[i + 1] == 'X');
  size_t j = i + 1 + hex;
  int64_t v = 0;
  const size_t first = j;
  for (; j < s.size() && (hex ? hexval(s[j]) >= 0 : (s[j] >= '0' && s[j] <= '9')); ++j)
    v = std::min<int64_t>(v * (hex ? 16 : 10) + hexval(s[j]), 0x7FFFFFFF);
  if (j == first) return -1;
  *end = j;
  return v;
}

// Python's html.unescape.
WStr html_unescape(const WStr& s) {
  WStr out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '&') {
      out += s[i++];
      continue;
    }
    size_t end = 0;
    const int64_t num = charref(s, i + 1, &end);
    if (num >= 0) {
      if (end < s.size() && s[end] == ';') ++end;
      if (num == 0)
        out += L'\uFFFD';
      else if (num == 0x0D)
        out += L'\r';
      else if (num >= 0x80 && num <= 0x9F)
        out += wchar_t(cp1252(char32_t(num)));
      else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
        out += L'\uFFFD';
      else if ((num >= 0x1 && num <= 0x8) || (num >= 0xE && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
               (num >= 0xFDD0 && num <= 0xFDEF) || num == 0xB || (num & 0xFFFF) >= 0xFFFE) {
      } else
        out += wchar_t(num);
      i = end;
      continue;
    }
    size_t j = i + 1;  // named: [^\t\n\f <&#;]{1,32};?
    while (j < s.size() && j - i - 1 < 32 && !wcschr(L"\t\n\f <&#;", s[j])) ++j;
    if (j == i + 1) {
      out += s[i++];
      continue;
    }
    WStr name = s.substr(i + 1, j - i - 1);
    if (j < s.size() && s[j] == ';') name += L';', ++j;
    if (const char* v = entity(name)) {
      out += decode_utf8(v);
    } else {
      size_t x = name.size() - 1;  // longest prefix that is an entity without ';'
      for (; x >= 2; --x)
        if (const char* p = entity(name.substr(0, x))) {
          out += decode_utf8(p) + name.substr(x);
          break;
        }
      if (x < 2) out += L"&" + name;
    }
    i = j;
  }
  return out;
}

// ---- BeautifulSoup(text, "html.parser").text, approximately ----
bool ascii_alpha(wchar_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool ascii_alnum(wchar_t c) { return ascii_alpha(c) || (c >= '0' && c <= '9'); }
WStr html_to_text(const WStr& s) {
  WStr out;
  const size_t n = s.size();
  size_t i = 0;
  for (; i < n;) {
    const wchar_t c = s[i];
    if (c == '<' && i + 1 < n && ascii_alpha(s[i + 1])) {  // start tag, '>' inside quoted attributes allowed
      size_t j = i + 1;
      wchar_t quote = 0;
      for (; j < n && (quote || s[j] != '>'); ++j)
        if (quote ? s[j] == quote : (s[j] == '"' || s[j] == '\'') && j > i + 1 && wcschr(L"= \t\n", s[j - 1]))
          quote = quote ? 0 : s[j];
      if (j >= n) break;  // unclosed: the rest is text
      size_t k = i + 1;
      while (k < j && ascii_alnum(s[k])) ++k;
      const WStr name = lower(s.substr(i + 1, k - i - 1));
      i = j + 1;
      if (name == L"script" || name == L"style" || name == L"template") {  // contents are not text for bs4
        const size_t close = s.find(L"</" + name, i);
        const size_t gt = close == WStr::npos ? WStr::npos : s.find(L'>', close);
        i = gt == WStr::npos ? n : gt + 1;
      }
      continue;
    }
    if (c == '<' && s.compare(i, 4, L"<!--") == 0) {
      const size_t e = s.find(L"-->", i + 4);
      if (e == WStr::npos) break;
      i = e + 3;
      continue;
    }
    if (c == '<' && i + 1 < n && (s[i + 1] == '/' || s[i + 1] == '!' || s[i + 1] == '?')) {
      const size_t e = s.find(L'>', i + 2);
      if (e == WStr::npos) break;
      i = e + 1;
      continue;
    }
    if (c == '&') {
      size_t end = 0;
      const int64_t num = charref(s, i + 1, &end);
      if (num >= 0 && end < n && !(hexval(s[end]) >= 0)) {  // needs a terminator, as html.parser
        if (s[end] == ';') ++end;
        if (num == 0 || (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
          out += L'\uFFFD';
        else
          out += wchar_t(cp1252(char32_t(num)));
        i = end;
        continue;
      }
      size_t j = i + 1;
      if (j < n && ascii_alpha(s[j])) {
        while (j < n && (ascii_alnum(s[j]) || s[j] == '-' || s[j] == '.')) ++j;
        if (j < n) {  // terminated: the ';' is consumed, an unknown name stays as "&name"
          const WStr name = s.substr(i + 1, j - i - 1);
          const char* v = entity(name);
          out += v ? decode_utf8(v) : L"&" + name;
          i = j + (s[j] == ';');
          continue;
        }
      }
    }
    out += c;
    ++i;
  }
  return out + s.substr(std::min(i, n));
}

// ---- the part of ftfy.fix_text that applies to text (see the header) ----
template <size_t N>
const char* lookup(const CpMap (&m)[N], char32_t c) {
  auto it = std::lower_bound(m, m + N, c, [](const CpMap& e, char32_t v) { return e.cp < v; });
  return it != m + N && it->cp == c ? it->utf8 : nullptr;
}
WStr ftfy_segment(WStr s) {
  static const Regex entity_re(L"&#?[0-9A-Za-z]{1,24};"), ansi_re(L"\x1b\\[(?:\\d|;)*[a-zA-Z]");
  for (;;) {
    const WStr before = s;
    if (s.find(L'<') == WStr::npos) {  // unescape_html="auto": only unambiguous entities ending in ';'
      WStr out;
      size_t last = 0;
      for (std::regex_iterator<WStr::const_iterator, wchar_t, PyTraits> it(s.begin(), s.end(), entity_re), e; it != e;
           ++it) {
        const WStr m = it->str();
        out += s.substr(last, it->position() - last);
        last = it->position() + m.size();
        const char* v = entity(m.substr(1));
        WStr u = v ? decode_utf8(v) : m;
        if (!v && m[1] == '#') u = html_unescape(m).find(L';') == WStr::npos ? html_unescape(m) : m;
        out += u;
      }
      s = out + s.substr(last);
    }
    WStr t;
    for (wchar_t c : s) {
      if (c >= 0x80 && c <= 0x9F) c = wchar_t(cp1252(c));
      if (const char* v = lookup(kLigatures, c))
        t += decode_utf8(v);
      else if (const char* w = lookup(kWidthMap, c))
        t += decode_utf8(w);
      else if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B))
        t += L'\'';
      else if (c >= 0x201C && c <= 0x201F)
        t += L'"';
      else
        t += c;
    }
    t = replace_all(t, L"\r\n", L"\n");
    for (wchar_t& c : t)
      if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
    t = sub(t, ansi_re);
    s.clear();
    for (wchar_t c : t)
      if (!in(kControlChars, c)) s += c;
    if (s == before) return s;
  }
}
WStr ftfy_fix_text(const WStr& s) {  // line by line, as ftfy
  WStr out;
  for (size_t pos = 0; pos < s.size();) {
    const size_t nl = s.find(L'\n', pos);
    const size_t end = nl == WStr::npos ? s.size() : nl + 1;
    out += ftfy_segment(s.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

// ---- the cleaning ----
WStr clean_once(WStr s) {
  using R = Regex;
  static const R url1(
      L"\\b((?:https?:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)"
      L"[\\w/-]*\\b\\/?(?!@)))");
  static const R url2(
      L"\\b((?:www:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)"
      L"[\\w/-]*\\b\\/?(?!@)))");
  static const R nick(L"@[\\w\\d]+\\b");
  // CJK strokes .. unified ideographs (Python removes the seven ranges one after another: the same as their union).
  static const R cjk(L"[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+");
  static const R dashes(
      L"[\\-\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
      L"\uFE31\uFE32\uFE58\uFE63\uFF0D]+");
  static const R dquotes(L"[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]"), squotes(L"[\u2018\u2019]");
  static const R quot(L"&quot;?"), amp(L"&amp"), ip(L"\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}");
  static const R article(L"\\d:\\d\\d\\s+$"), lit_nl(L"\\\\n"), hash3(L"#\\d{1,3}\\b"), hash5(L"#\\d{5,}\\b");
  static const R num6(L"\\b\\d{6,}\\b"), file(L"[\\S]+\\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)");
  static const R quotes2(L"[\"']{2,}"), dots2(L"[\\.]{2,}");
  static const R bad_punct(
      L"[#\u00ae\u2022\u00a9\u2122&@\u00b7\u00ba\u00bd\u00be\u00bf\u00a1\u00a7~\\)\\(\\]\\[\\}\\{"
      L"\\|\\\\/\\*]+");
  static const R spaced_dot(L"\\s+\\.\\s+"), dash_us(L"[-_]");
  static const R id1(L"\\b[a-zA-Z]{1,3}\\d{3,15}\\b"), id2(L"\\b[a-zA-Z]+\\d+[a-zA-Z]+\\b"),
      id3(L"\\b\\d+[a-zA-Z]+\\d+\\b");
  static const R ship(L"(worldwide\\s+)?(free\\s+)?shipping"), down(L"(free\\s)?download(\\sfree)?");
  static const R click(L"\\bclick\\b\\s(?:for|on)\\s\\w+"),
      ext(L"\\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\\simage[s]?)?");
  static const R page(L"\\bpage\\s+\\d+\\b"), id4(L"\\b\\d*[a-zA-Z]+\\d+[a-zA-Z]+\\d+[a-zA-Z\\d]*\\b");
  static const R dims(L"\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b"), colon(L"\\b\\s+\\:\\s+");
  static const R punct_space(L"(\\D[,\\./])\\b"), spaces(L"\\s+"), lead(L"^['_,\\-:;]"), trail(L"['_,\\-:\\-\\+]$");
  static const R dotword(L"^\\.\\S+$");

  s = lower(strip(unquote_plus(s)));
  s = replace_all(s, L"<person>", L"person");
  s = sub(sub(s, url1), url2);
  s = html_to_text(s);
  s = sub(sub(s, nick), cjk);
  s = sub(s, dashes, L"-");
  s = sub(sub(s, dquotes, L"\""), squotes, L"'");
  s = sub(sub(s, quot), amp);
  s = sub(s, ip, L" ");
  s = sub(s, article);
  s = sub(s, lit_nl, L" ");
  s = sub(sub(sub(sub(s, hash3), hash5), num6), file);
  s = sub(s, quotes2, L"\"");
  s = sub(s, dots2, L" ");
  s = sub(s, bad_punct, L" ");
  s = sub(s, spaced_dot, L" ");
  if (std::count_if(s.begin(), s.end(), [](wchar_t c) { return c == '-' || c == '_'; }) > 3) s = sub(s, dash_us, L" ");
  s = strip(html_unescape(html_unescape(ftfy_fix_text(s))));  // Open-Sora's basic_clean
  s = sub(sub(sub(s, id1), id2), id3);
  s = sub(sub(sub(sub(sub(s, ship), down), click), ext), page);
  s = sub(s, id4, L" ");
  s = sub(s, dims);
  s = sub(s, colon, L": ");
  s = sub(s, punct_space, L"$1 ");
  s = sub(s, spaces, L" ");
  // ^["']([\w\W]+)["']$ by hand: std::regex would recurse once per character.
  if (s.size() >= 3 && (s.front() == '"' || s.front() == '\'') && (s.back() == '"' || s.back() == '\''))
    s = s.substr(1, s.size() - 2);
  s = sub(sub(s, lead), trail);
  s = sub(s, dotword);
  return strip(s);
}
}  // namespace

std::string clean_caption_once(const std::string& caption) { return encode_utf8(clean_once(decode_utf8(caption))); }

std::string clean_caption(const std::string& caption) {
  return encode_utf8(clean_once(clean_once(decode_utf8(caption))));
}

}  // namespace opendit::models::t5
