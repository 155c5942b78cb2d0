// Small string helpers: suggestions for typos, splitting and joining, shapes in messages.
#pragma once
#include <string>
#include <vector>

namespace opendit {

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word` by edit distance (ties: the first); empty if there are no candidates.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// The shortest text that reads back as the same double (std::to_chars, fixed or scientific, whichever is shorter),
// exponent without padding: 0.1 -> "0.1", 1e-4 -> "1e-4", 0.00015 -> "0.00015", 2 -> "2". For printing values as
// the user wrote them (decks, metadata).
std::string shortest(double value);

std::vector<std::string> split(const std::string& s, char sep);
std::string trim(const std::string& s);
std::string join(const std::vector<std::string>& parts, const std::string& sep);
bool ends_with(const std::string& s, const std::string& tail);  // file suffixes: ends_with(path, ".png")

// A shape (any sequence of integers: std::vector<int64_t>, at::IntArrayRef) as "[2, 3, 4]", for messages.
template <typename Dims>
std::string shape_str(const Dims& dims) {
  std::string s = "[";
  bool first = true;
  for (const auto d : dims) s += (first ? "" : ", ") + std::to_string(d), first = false;
  return s + "]";
}

}  // namespace opendit
