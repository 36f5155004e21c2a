/* Start-up probe: the smallest static program that does something visible. */
#include <stdio.h>

int main(void)
{
    puts("hello, world");
    return 0;
}
