// Allocation failures told apart from other errors, so that the code that knows what it was doing can say what to
// change. torch's CUDA allocator throws c10::OutOfMemoryError; its CPU allocator a plain c10::Error.
#pragma once
#include <c10/util/Exception.h>

#include <string>

namespace opendit {

bool is_out_of_memory(const c10::Error& e);

// torch's message, one line, without its source location and its pointer to Python documentation:
// "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of ..." or
// "host memory: an allocation of 12.0 GiB failed (Cannot allocate memory)".
std::string out_of_memory_summary(const c10::Error& e);

}  // namespace opendit
