#include "names.h"

#include <stdlib.h>
#include <string.h>

/* Unsigned bytes (memcmp compares them as unsigned char), a shorter prefix first. */
int bytes_compare(const void *a, size_t a_size, const void *b, size_t b_size)
{
    int order = memcmp(a, b, a_size < b_size ? a_size : b_size);
    return order ? order : (a_size > b_size) - (a_size < b_size);
}

bool names_find(const names_t *names, const char *name, size_t size, size_t *at)
{
    size_t i = 0;
    int order = 1;
    for (; i < names->count; i++)
        if ((order = bytes_compare(names->entry[i].bytes, names->entry[i].size, name, size)) >= 0)
            break;
    *at = i; /* where it is, or where it belongs */
    return i < names->count && order == 0;
}

name_entry_t *names_get(names_t *names, const char *name, size_t size, bool *added)
{
    size_t i;
    bool found = names_find(names, name, size, &i);
    if (added)
        *added = !found;
    if (found)
        return &names->entry[i];
    if (names->count == names->room) {
        names->room = names->room ? 2 * names->room : 8;
        names->entry = realloc(names->entry, names->room * sizeof *names->entry);
        if (!names->entry)
            fail("memory", "out of memory");
    }
    name_entry_t *entry = &names->entry[i];
    memmove(entry + 1, entry, (names->count - i) * sizeof *entry);
    names->count++;
    *entry = (name_entry_t){.size = size};
    memcpy(entry->bytes, name, size);
    return entry;
}

void names_remove(names_t *names, size_t i)
{
    names->count--;
    memmove(&names->entry[i], &names->entry[i + 1], (names->count - i) * sizeof *names->entry);
}

void names_free(names_t *names)
{
    free(names->entry);
    *names = (names_t){0};
}

