#include "diffusion/schedule.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace opendit::diffusion {
namespace {

constexpr double kPi = 3.14159265358979323846;

// numpy.linspace(start, stop, n) for float64: start + i * step, with the last point set to stop exactly.
std::vector<double> linspace(double start, double stop, int n) {
  std::vector<double> out(n);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / (n - 1);
  for (int i = 0; i < n; ++i) out[i] = start + i * step;
  out[n - 1] = stop;
  return out;
}

double cosine_alpha_bar(double u) {
  const double c = std::cos((u + 0.008) / 1.008 * kPi / 2);
  return c * c;
}

// Python's round(): to the nearest integer, ties to the even one.
int64_t round_half_even(double v) {
  const double lo = std::floor(v);
  const double frac = v - lo;
  int64_t r = static_cast<int64_t>(lo);
  if (frac > 0.5 || (frac == 0.5 && (r % 2 != 0))) ++r;
  return r;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// A non-negative decimal count, or an Error quoting the whole spec.
int64_t parse_count(const std::string& piece, const std::string& spec) {
  const std::string t = trim(piece);
  bool ok = !t.empty() && t.size() <= 9;
  for (char c : t) ok = ok && c >= '0' && c <= '9';
  if (!ok) {
    throw Error(cat("timestep respacing: expected a comma-separated list of step counts (\"250\", \"10,20,30\") or "
                    "\"ddimN\", found \"", spec, "\" (bad count \"", t, "\")"));
  }
  return std::stoll(t);
}

std::vector<int64_t> ddim_stride(int num_steps, const std::string& spec) {
  const int64_t want = parse_count(spec.substr(4), spec);
  // The smallest integer stride s with exactly `want` points in range(0, num_steps, s).
  for (int64_t s = 1; s < num_steps; ++s) {
    if ((num_steps + s - 1) / s == want) {
      std::vector<int64_t> out;
      for (int64_t t = 0; t < num_steps; t += s) out.push_back(t);
      return out;
    }
  }
  throw Error(cat("timestep respacing \"", spec, "\": expected a step count that an integer stride over ", num_steps,
                  " steps gives exactly, found ", want, " (no stride does)"));
}

}  // namespace

std::vector<double> betas_for(const std::string& schedule, int num_steps) {
  if (num_steps < 1) {
    throw Error(cat("diffusion steps: expected at least 1, found ", num_steps));
  }
  if (schedule == "linear") {
    const double scale = 1000.0 / num_steps;
    if (scale * 0.02 > 1.0) {
      throw Error(cat("linear beta schedule: expected at least 20 diffusion steps (betas up to 0.02 * 1000 / steps "
                      "must not exceed 1), found ", num_steps));
    }
    return linspace(scale * 0.0001, scale * 0.02, num_steps);
  }
  if (schedule == "cosine" || schedule == "squaredcos_cap_v2") {
    std::vector<double> betas(num_steps);
    for (int i = 0; i < num_steps; ++i) {
      const double t1 = static_cast<double>(i) / num_steps;
      const double t2 = static_cast<double>(i + 1) / num_steps;
      betas[i] = std::min(1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1), 0.999);
    }
    return betas;
  }
  throw Error(cat("noise schedule: expected \"linear\" or \"cosine\", found \"", schedule, "\""));
}

std::vector<int64_t> space_timesteps(int num_steps, const std::string& spec_in) {
  if (num_steps < 1) {
    throw Error(cat("diffusion steps: expected at least 1, found ", num_steps));
  }
  const std::string spec = trim(spec_in);
  std::vector<int64_t> all;
  if (spec.empty()) {
    for (int64_t t = 0; t < num_steps; ++t) all.push_back(t);
    return all;
  }
  if (spec.rfind("ddim", 0) == 0) return ddim_stride(num_steps, spec);

  std::vector<int64_t> counts;
  size_t pos = 0;
  while (true) {
    const size_t comma = spec.find(',', pos);
    counts.push_back(parse_count(spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos), spec));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }

  const int64_t sections = static_cast<int64_t>(counts.size());
  const int64_t size_per = num_steps / sections;
  const int64_t extra = num_steps % sections;
  int64_t start = 0;
  for (int64_t i = 0; i < sections; ++i) {
    const int64_t size = size_per + (i < extra ? 1 : 0);
    const int64_t count = counts[i];
    if (count > size) {
      throw Error(cat("timestep respacing \"", spec, "\": section ", i + 1, " of ", sections, " spans ", size,
                      " of the ", num_steps, " steps, so expected at most ", size, " steps there, found ", count));
    }
    const double stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
    double cur = 0.0;  // accumulated like IDDPM, so the rounding sees the same float values
    for (int64_t k = 0; k < count; ++k) {
      all.push_back(start + round_half_even(cur));
      cur += stride;
    }
    start += size;
  }
  if (all.empty()) {
    throw Error(cat("timestep respacing \"", spec, "\": expected at least one step kept, found none"));
  }
  return all;  // sections are disjoint and strides >= 1, so this is ascending and duplicate-free
}

}  // namespace opendit::diffusion
