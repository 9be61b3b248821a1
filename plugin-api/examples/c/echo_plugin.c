/*
 * A patchbay plugin in C: answers every message with the same bytes (reply_osc) and fails on a
 * message whose address is /fail. Build:
 *
 *   cc -shared -fPIC -I plugin-api/include plugin-api/examples/c/echo_plugin.c -o echo.so
 */
#include <stdlib.h>
#include <string.h>

#include "patchbay_plugin.h"

typedef struct Echo {
    const PbHostVtable *host;
    void *host_ctx;
    uint64_t echoed;
} Echo;

/* Error messages are malloc'd here and freed by echo_free_buffer: the side that allocates frees. */
static void set_error(PbBuffer *error_out, const char *text) {
    size_t len = strlen(text);
    uint8_t *copy = malloc(len);
    if (error_out == NULL || copy == NULL) {
        free(copy);
        return;
    }
    memcpy(copy, text, len);
    error_out->ptr = copy;
    error_out->len = len;
    error_out->cap = len;
}

static void log_line(const Echo *echo, uint32_t level, const char *text) {
    echo->host->log(echo->host_ctx, level, (const uint8_t *)text, strlen(text));
}

static int32_t echo_create(const PbHostVtable *host, void *host_ctx, const uint8_t *config_json,
                           size_t config_len, void **instance_out, PbBuffer *error_out) {
    (void)config_json;
    (void)config_len;
    if (host == NULL || instance_out == NULL) {
        set_error(error_out, "create called without a host table");
        return PB_ERROR;
    }
    if (host->abi_version != PATCHBAY_ABI_VERSION) {
        set_error(error_out, "host speaks another ABI version than this plugin (1)");
        return PB_ERROR;
    }
    Echo *echo = calloc(1, sizeof *echo);
    if (echo == NULL) {
        set_error(error_out, "out of memory");
        return PB_ERROR;
    }
    echo->host = host;
    echo->host_ctx = host_ctx;
    log_line(echo, PB_LOG_INFO, "c echo ready");
    *instance_out = echo;
    return PB_OK;
}

/* The address is the packet's first string; compare it, padding and all, with "/fail". */
static int is_fail(const uint8_t *osc, size_t len) {
    static const char fail[] = "/fail";
    return len >= sizeof fail && memcmp(osc, fail, sizeof fail) == 0;
}

static int32_t echo_on_message(void *instance, const uint8_t *osc, size_t len, uint64_t origin,
                               PbBuffer *error_out) {
    Echo *echo = instance;
    if (echo == NULL) {
        set_error(error_out, "no instance");
        return PB_ERROR;
    }
    if (is_fail(osc, len)) {
        set_error(error_out, "asked to fail");
        return PB_ERROR;
    }
    int32_t rc = echo->host->reply_osc(echo->host_ctx, origin, osc, len);
    if (rc != PB_HOST_OK) {
        set_error(error_out, "reply refused by the host");
        return PB_ERROR;
    }
    echo->echoed++;
    echo->host->count(echo->host_ctx, (const uint8_t *)"echoed", 6, 1);
    return PB_OK;
}

static int32_t echo_on_timer(void *instance, uint64_t timer, PbBuffer *error_out) {
    (void)instance;
    (void)timer;
    (void)error_out;
    return PB_OK;
}

static void echo_on_unload(void *instance) {
    Echo *echo = instance;
    if (echo == NULL) {
        return;
    }
    log_line(echo, PB_LOG_INFO, "c echo unloaded");
    free(echo);
}

static void echo_free_buffer(PbBuffer buffer) {
    free(buffer.ptr);
}

static const PbPluginVtable ECHO_VTABLE = {
    .abi_version = PATCHBAY_ABI_VERSION,
    .name = "c-echo",
    .version = "1.0.0",
    .panic_unwind = 1, /* C does not unwind, so nothing can escape */
    .create = echo_create,
    .on_message = echo_on_message,
    .on_timer = echo_on_timer,
    .on_unload = echo_on_unload,
    .free_buffer = echo_free_buffer,
};

PATCHBAY_EXPORT uint32_t patchbay_plugin_abi_version(void) {
    return PATCHBAY_ABI_VERSION;
}

PATCHBAY_EXPORT const PbPluginVtable *patchbay_plugin_entry(void) {
    return &ECHO_VTABLE;
}
