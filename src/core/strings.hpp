// Small string helpers shared by the config and the CLI.
#pragma once
#include <string>
#include <vector>

namespace opendit {

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word` by edit distance (ties: the first); empty if there are no candidates.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

std::vector<std::string> split(const std::string& s, char sep);
std::string trim(const std::string& s);
std::string join(const std::vector<std::string>& parts, const std::string& sep);

}  // namespace opendit
