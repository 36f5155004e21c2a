/* A shared library function to fuzz with a bare Unicorn harness (examples/attach_shared_lib.py):
 * parse_message() trusts the length its first byte declares when it allocates, then copies what
 * actually arrived. */
#include <stdlib.h>

int parse_message(const unsigned char *buf, size_t len)
{
    if (len < 2)
        return -1;
    size_t declared = buf[0];
    unsigned char *body = malloc(declared);
    if (body == NULL)
        return -1;
    for (size_t i = 0; i + 1 < len; i++)         /* heap overflow when more arrived than declared */
        body[i] = buf[1 + i];  /* @overflow */
    int sum = 0;
    for (size_t i = 0; i < declared; i++)
        sum += body[i];
    free(body);
    return sum;
}
