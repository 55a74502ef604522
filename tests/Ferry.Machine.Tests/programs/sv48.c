/* sv48: the sv39 program with a four-level walk (satp mode 9): the same checks (codes as in sv39.c) plus a 512 GiB
 * leaf at level 3 (code 70) and a 48-bit non-canonical address (code 28). */
#define LEVELS 4
#include "sv39.c"
