// The doctest entry point of tally_tests (one binary; CUDA test cases skip visibly without a GPU).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
