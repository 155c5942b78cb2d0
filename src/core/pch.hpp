// Precompiled header of opendit_core: the torch pieces most translation units use.
// Parsing these dominates compile time on a 2-core machine, so they are parsed once.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
