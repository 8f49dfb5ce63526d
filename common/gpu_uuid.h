// The text form of a GPU's UUID ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as
// nvidia-smi -L prints it): the manager puts it in the pool descriptor and a worker
// compares it with its own devices' to find the GPU that holds the pool, so both sides
// must format it the same way. Free of CUDA: it takes cudaUUID_t's 16 bytes.
#pragma once

#include <cstdio>
#include <string>

namespace kvpool {

inline std::string FormatGpuUuid(const unsigned char (&b)[16]) {
  char text[48];
  std::snprintf(text, sizeof(text),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return text;
}

}  // namespace kvpool
