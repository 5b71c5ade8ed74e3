"""focalsam.metrics"""
