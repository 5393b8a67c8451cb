#include <stdio.h>

/* Compiled inside the sandbox by the host's gcc, imported as build inputs. */
int main(void) {
    unsigned long sum = 0;
    for (unsigned long i = 1; i <= 100; i++)
        sum += i;
    printf("Hello from C! 1 + 2 + ... + 100 = %lu\n", sum);
    return 0;
}
