/*
 * patchbay plugin ABI, version 1.
 *
 * The same ABI as the Rust crate patchbay-plugin-api (module `abi`); a test compares the layouts
 * of the two field by field. A plugin is a shared library exporting two functions:
 *
 *   uint32_t patchbay_plugin_abi_version(void);
 *       Returns PATCHBAY_ABI_VERSION. The host calls it first, before anything else, and refuses
 *       the library if the number differs.
 *
 *   const PbPluginVtable *patchbay_plugin_entry(void);
 *       Returns a pointer to a static table, valid for as long as the library is loaded (patchbay
 *       never unloads a library). Every function pointer must be set; name and version must be
 *       non-empty static NUL-terminated UTF-8; panic_unwind must be 1.
 *
 * Messages cross as OSC 1.0/1.1 packets (bytes and length), never as language-specific values.
 *
 * OWNERSHIP: whatever one side allocates, the same side frees.
 *   - Host memory handed to the plugin (OSC bytes, config JSON, names, the host table) is only
 *     borrowed for the duration of the call. Copy what you keep. The host table and its ctx stay
 *     valid from create until on_unload returns.
 *   - Memory the plugin hands to the host (an error message in *error_out) is allocated by the
 *     plugin however it likes; the host copies it and gives it back through the plugin's own
 *     free_buffer. `cap` is the plugin's own bookkeeping; the host passes it back unchanged.
 *
 * THREADS: calls into one instance never overlap, but may come from different threads one after
 * the other. Host callbacks may be called only from inside a call the host made into the plugin,
 * on that thread. The host never calls into an instance from inside one of its callbacks.
 *
 * Pointer + length pairs: a NULL pointer is allowed when the length is 0. Strings passed as pointer
 * + length are UTF-8 and not NUL-terminated.
 */
#ifndef PATCHBAY_PLUGIN_H
#define PATCHBAY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PATCHBAY_ABI_VERSION 1u

/* What a plugin's patchbay_plugin_* functions need in front of them to be exported. */
#if defined(_WIN32)
#define PATCHBAY_EXPORT __declspec(dllexport)
#else
#define PATCHBAY_EXPORT __attribute__((visibility("default")))
#endif

/* Return codes of create, on_message and on_timer. */
#define PB_OK 0    /* success; *error_out untouched */
#define PB_ERROR 1 /* failure; a message in *error_out (allocated by the plugin) */
#define PB_PANIC 2 /* a panic was caught (Rust plugins); the panic message in *error_out */

/* Return codes of the host callbacks send, reply_osc, reply_bytes and schedule. */
#define PB_HOST_OK 0
#define PB_HOST_UNKNOWN 1 /* no such channel, or the origin is no longer known */
#define PB_HOST_REFUSED 2 /* not one valid OSC packet, a channel that cannot send, too many timers */
#define PB_HOST_DROPPED 3 /* accepted but dropped: full queue or failed send */

/* Levels of log. */
#define PB_LOG_ERROR 1u
#define PB_LOG_WARN 2u
#define PB_LOG_INFO 3u
#define PB_LOG_DEBUG 4u

/* Bytes allocated by the plugin, freed by the plugin's free_buffer. ptr NULL means none. */
typedef struct PbBuffer {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} PbBuffer;

/* ---- Host callbacks. Each receives the ctx given to create. ---------------------------------- */

/* Sends one OSC packet (message or bundle) to the channel named `channel`. PB_HOST_*. */
typedef int32_t (*PbSendFn)(void *ctx, const uint8_t *channel, size_t channel_len,
                            const uint8_t *osc, size_t len);
/* Answers `origin` (the Peer of a message): reply_osc with one OSC packet, reply_bytes with raw
 * bytes sent as they are. PB_HOST_*. */
typedef int32_t (*PbReplyFn)(void *ctx, uint64_t origin, const uint8_t *bytes, size_t len);
/* Closes the connection `origin` came on: 1 closed, 0 not (UDP has no connection). */
typedef int32_t (*PbCloseFn)(void *ctx, uint64_t origin);
/* A log line (UTF-8) at a PB_LOG_* level; the host adds the plugin's name. */
typedef void (*PbLogFn)(void *ctx, uint32_t level, const uint8_t *msg, size_t len);
/* Adds `value` to the plugin's counter `name` (UTF-8). */
typedef void (*PbCountFn)(void *ctx, const uint8_t *name, size_t name_len, uint64_t value);
/* Calls on_timer(instance, timer) once, delay_ms from now. Timer ids are the plugin's own; the
 * same id scheduled twice gives two calls. PB_HOST_*. */
typedef int32_t (*PbScheduleFn)(void *ctx, uint64_t delay_ms, uint64_t timer);

typedef struct PbHostVtable {
    uint32_t abi_version; /* PATCHBAY_ABI_VERSION; a plugin refuses (PB_ERROR) a host that differs */
    PbSendFn send;
    PbReplyFn reply_osc;
    PbReplyFn reply_bytes;
    PbCloseFn close;
    PbLogFn log;
    PbCountFn count;
    PbScheduleFn schedule;
} PbHostVtable;

/* ---- Plugin functions. ------------------------------------------------------------------------ */

/* Makes one instance (one per route target). config_json is the route's `config:` map as a JSON
 * object (`{}` without one). On PB_OK, *instance_out holds the instance; host and host_ctx stay
 * valid until on_unload of that instance returns. */
typedef int32_t (*PbCreateFn)(const PbHostVtable *host, void *host_ctx, const uint8_t *config_json,
                              size_t config_len, void **instance_out, PbBuffer *error_out);
/* One OSC packet for the instance. `origin` is an opaque token for where it came from; the plugin
 * may keep it to answer later through reply_osc / reply_bytes / close, for as long as the host
 * remembers that origin (after that those return PB_HOST_UNKNOWN). */
typedef int32_t (*PbOnMessageFn)(void *instance, const uint8_t *osc, size_t len, uint64_t origin,
                                 PbBuffer *error_out);
/* A timer scheduled by this instance is due. */
typedef int32_t (*PbOnTimerFn)(void *instance, uint64_t timer, PbBuffer *error_out);
/* The last call for an instance: it may still use the host callbacks, then frees itself. */
typedef void (*PbOnUnloadFn)(void *instance);
/* Frees a buffer this plugin put in an error_out. A NULL ptr is a no-op. */
typedef void (*PbFreeBufferFn)(PbBuffer buffer);

typedef struct PbPluginVtable {
    uint32_t abi_version; /* PATCHBAY_ABI_VERSION */
    const char *name;     /* static, NUL-terminated, UTF-8, non-empty */
    const char *version;  /* static, NUL-terminated, UTF-8 */
    /* 1 if a panic inside the plugin is caught before it reaches the host. C plugins set 1 (C does
     * not unwind). A Rust plugin built with panic = "abort" has 0 and is refused at load. */
    uint32_t panic_unwind;
    PbCreateFn create;
    PbOnMessageFn on_message;
    PbOnTimerFn on_timer;
    PbOnUnloadFn on_unload;
    PbFreeBufferFn free_buffer;
} PbPluginVtable;

/* The two exported symbols. */
PATCHBAY_EXPORT uint32_t patchbay_plugin_abi_version(void);
PATCHBAY_EXPORT const PbPluginVtable *patchbay_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* PATCHBAY_PLUGIN_H */
