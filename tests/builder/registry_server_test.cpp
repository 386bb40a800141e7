// placeholder: tests arrive with the implementation
#include <doctest/doctest.h>
