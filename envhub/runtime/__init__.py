"""Running environments: :mod:`~envhub.runtime.make` (``make``, ``pull``), :mod:`~envhub.runtime.locate`
(from an id or a folder to a version on this machine), :mod:`~envhub.runtime.loading` (in-process
import), the session protocol's :mod:`~envhub.runtime.server` and :mod:`~envhub.runtime.client`,
pooled servers (:mod:`~envhub.runtime.pool`, :mod:`~envhub.runtime.remote`) in a child process
(:mod:`~envhub.runtime.process`) or a container (:mod:`~envhub.runtime.docker`, images from
:mod:`~envhub.runtime.images`), and gymnasium ids (:mod:`~envhub.runtime.registration`)."""
