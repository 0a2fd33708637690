/* A set of names sorted by their bytes, each with a number its owner keeps: the chat server's
   roster (when it last heard from each handle), the chat client's posts received per handle, the
   ticker publisher's topics and subscribers, the valuation sink's workers. */
#ifndef BTB_NAMES_H
#define BTB_NAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "contract.h"

/* A name of 1 to MAX_NAME bytes (contract.h), kept as bytes: sorted as unsigned bytes, a shorter
   prefix first, whatever they encode (UTF-8 bytes sort as the code points they encode). */
typedef struct {
    size_t size;
    char bytes[MAX_NAME];
    int64_t value;
} name_entry_t;
typedef struct {
    name_entry_t *entry;
    size_t count, room;
} names_t;
/* The entry of `name` (1 to MAX_NAME bytes), added in order with value 0 if it is new. */
name_entry_t *names_get(names_t *names, const char *name, size_t size, bool *added);
/* Whether `name` is in the set, and if so at which index (for names_remove). */
bool names_find(const names_t *names, const char *name, size_t size, size_t *at);
void names_remove(names_t *names, size_t i);
void names_free(names_t *names);
/* The order of two byte strings: unsigned bytes, a shorter prefix first (memcmp's sign). */
int bytes_compare(const void *a, size_t a_size, const void *b, size_t b_size);

#endif
