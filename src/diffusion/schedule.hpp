// Noise schedules and timestep respacing (DDPM / IDDPM conventions, as used by DiT).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace opendit::diffusion {

// The betas of a base diffusion of num_steps steps, in float64.
//  - "linear": linspace(s * 1e-4, s * 0.02, num_steps) with s = 1000 / num_steps (Ho et al., extended to any
//    step count as in IDDPM), so 1000 steps give the classic 1e-4 .. 0.02.
//  - "cosine" (alias "squaredcos_cap_v2"): IDDPM's cosine schedule,
//    beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999) with abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2).
// Throws opendit::Error for an unknown name, num_steps < 1, or a linear schedule whose betas would exceed 1
// (fewer than 20 steps).
std::vector<double> betas_for(const std::string& schedule, int num_steps);

// The base timesteps that a respaced diffusion keeps, ascending, following IDDPM's space_timesteps:
//  - "N1,N2,...": the num_steps steps are cut into equal sections (the first num_steps % k sections one step
//    longer) and section j keeps Nj steps at a fractional stride (size - 1) / (Nj - 1), rounded half to even;
//    "250" is the one-section case.
//  - "ddimN": the fixed integer stride of the DDIM paper: range(0, num_steps, s) for the smallest s giving
//    exactly N steps.
//  - "" (empty): every step, as DiT's create_diffusion does for an empty respacing.
// Throws opendit::Error (saying what was expected and what was found) for num_steps < 1, text that is not a
// count list, a section count larger than its section, no step kept at all, or a "ddimN" no stride can give.
std::vector<int64_t> space_timesteps(int num_steps, const std::string& spec);

}  // namespace opendit::diffusion
