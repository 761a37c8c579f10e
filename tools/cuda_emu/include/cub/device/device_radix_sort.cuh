// CUDA emulation (see cuda_runtime.h): cub::DeviceRadixSort::SortPairs as a stable sort on the host, over the
// key bits [begin_bit, end_bit), with CUB's two-call temporary-storage protocol.
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>

#include "../../cuda_runtime.h"

namespace cub {
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t stream = nullptr) {
    tally_emu::check_stream(stream, "cub::DeviceRadixSort::SortPairs");
    if (!temp) {
      temp_bytes = 64;  // something to allocate, as CUB always asks for
      return cudaSuccess;
    }
    auto bits = [&](K k) {
      K v = K(k >> begin_bit);
      int width = end_bit - begin_bit;
      return width >= int(sizeof(K) * 8) ? v : K(v & ((K(1) << width) - 1));
    };
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bits(keys_in[a]) < bits(keys_in[b]); });
    std::vector<K> k(static_cast<size_t>(n));
    std::vector<V> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      k[size_t(i)] = keys_in[order[size_t(i)]];
      v[size_t(i)] = values_in[order[size_t(i)]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};
}  // namespace cub
