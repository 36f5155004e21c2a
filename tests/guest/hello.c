/* Smallest real program: argv, environment, stdout, exit status. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    printf("hello from %d args:", argc);
    for (int i = 1; i < argc; i++)
        printf(" [%s]", argv[i]);
    const char *v = getenv("EMSAN_TEST_VAR");
    printf("\nEMSAN_TEST_VAR=%s\n", v ? v : "(unset)");
    return argc > 2 ? atoi(argv[2]) : 0;
}
