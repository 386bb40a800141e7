// envd: the command-line entry point.
#include <iostream>
int main() { std::cout << "envd\n"; return 0; }
